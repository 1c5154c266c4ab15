"""A small CNN that reads the class (10) and the colour (8) of a 32x32 coloured Fashion-MNIST image.

It measures prompt adherence of the lab pipelines: ``adherence(pipe, ...)`` samples ``"a {colour} {class}"``
prompts and reports the share of images whose predicted class / colour match the prompt.

    python -m steer.lab.classifier train --out assets/classifier
    python -m steer.lab.classifier adherence --model assets/models/demo --n 240
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from . import data as D
from .models import load_pipeline, sample

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "assets" / "classifier"


class AdherenceClassifier(nn.Module):
    def __init__(self, width: int = 16, n_classes: int = 10, n_colours: int = 8):
        super().__init__()
        w = width
        self.config = {"width": width, "n_classes": n_classes, "n_colours": n_colours}
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),  # 16
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),  # 8
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(), nn.MaxPool2d(2),  # 4
            nn.Flatten(),
            nn.Linear(4 * w * 16, 128), nn.ReLU(), nn.Dropout(0.2),
        )
        self.class_head = nn.Linear(128, n_classes)
        self.colour_head = nn.Linear(128, n_colours)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` float [N,3,32,32] in [0,1] -> (class logits, colour logits)."""
        h = self.features(x * 2 - 1)
        return self.class_head(h), self.colour_head(h)


def save_classifier(model: AdherenceClassifier, path: str | Path, metrics: dict | None = None) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to(torch.float16) if v.dtype.is_floating_point else v for k, v in model.state_dict().items()}
    save_file(sd, str(path / "model.safetensors"))
    cfg = {**model.config, "class_names": list(D.CLASS_NAMES), "colour_names": list(D.COLOUR_NAMES),
           "input": "float RGB [N,3,32,32] in [0,1]", **({"metrics": metrics} if metrics else {})}
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    return path


def load_classifier(path: str | Path = DEFAULT_PATH) -> AdherenceClassifier:
    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    model = AdherenceClassifier(cfg["width"], cfg["n_classes"], cfg["n_colours"])
    sd = load_file(str(path / "model.safetensors"))
    model.load_state_dict({k: v.float() if v.dtype.is_floating_point else v for k, v in sd.items()})
    return model.eval()


@torch.no_grad()
def predict(model: AdherenceClassifier, images, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Predicted (class, colour) indices for float images [N,3,32,32] in [0,1]."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    cls, col = [], []
    for i in range(0, len(x), batch_size):
        a, b = model(x[i : i + batch_size])
        cls.append(a.argmax(1))
        col.append(b.argmax(1))
    return torch.cat(cls).numpy(), torch.cat(col).numpy()


def _augment(gray: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random recolouring, brightness, shifts, blur and noise of grey items [B,28,28] uint8 -> ([B,3,32,32], colour)."""
    b = len(gray)
    x = F.pad(gray.float() / 255.0, (2, 2, 2, 2))
    colours = torch.randint(0, len(D.COLOUR_NAMES), (b,), generator=g)
    tint = torch.tensor([D.COLOURS[c] for c in D.COLOUR_NAMES])[colours]
    x = x[:, None] * tint[:, :, None, None]
    x = x * (0.75 + 0.35 * torch.rand(b, 1, 1, 1, generator=g))
    sx, sy = torch.randint(-2, 3, (2,), generator=g).tolist()
    x = torch.roll(x, (sx, sy), dims=(2, 3))
    blur = torch.rand(b, generator=g) < 0.5
    if blur.any():
        k = torch.tensor([0.25, 0.5, 0.25])
        k2 = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
        x[blur] = F.conv2d(x[blur], k2, padding=1, groups=3)
    x = (x + 0.03 * torch.randn(x.shape, generator=g) * (torch.rand(b, 1, 1, 1, generator=g) < 0.5)).clamp(0, 1)
    return x, colours


def train_classifier(out: str | Path = DEFAULT_PATH, steps: int = 800, batch_size: int = 128, lr: float = 2e-3,
                     seed: int = 0, threads: int = 1, init: str | Path | None = None) -> tuple[AdherenceClassifier, dict]:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    gray, labels = D.load_fashion_mnist("train")
    gray_t, labels_t = torch.from_numpy(gray.copy()), torch.from_numpy(labels)
    model = load_classifier(init).train() if init else AdherenceClassifier()
    prior = json.loads((Path(init) / "config.json").read_text()).get("metrics", {}).get("train_steps", 0) if init else 0
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(gray_t), (batch_size,), generator=g)
        x, col = _augment(gray_t[idx], g)
        a, b = model(x)
        loss = F.cross_entropy(a, labels_t[idx]) + F.cross_entropy(b, col)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            print(f"classifier step {step} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    test = D.make_coloured_fashion_mnist("test", seed=0)
    pc, pk = predict(model, test.images)
    metrics = {
        "test_class_accuracy": float(np.mean(pc == test.classes)),
        "test_colour_accuracy": float(np.mean(pk == test.colours)),
        "test_set": "coloured Fashion-MNIST t10k, seed 0 (10,000 images)",
        "train_steps": prior + steps, "batch_size": batch_size, "seconds": round(time.time() - t0, 1),
    }
    save_classifier(model, out, metrics)
    return model, metrics


def adherence_prompts(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``n`` full prompts cycling through all 80 (colour, class) pairs in a seeded order."""
    allp = D.all_full_prompts()
    order = np.random.default_rng(seed).permutation(len(allp))
    picks = [allp[order[i % len(allp)]] for i in range(n)]
    return [p for p, _, _ in picks], np.array([c for _, c, _ in picks]), np.array([k for _, _, k in picks])


def adherence(pipe, n: int = 240, seed: int = 0, steps: int = 25, guidance: float = 5.0,
              classifier: AdherenceClassifier | None = None, return_images: bool = False) -> dict:
    """Share of ``n`` generated images whose predicted class / colour match their prompt."""
    classifier = classifier if classifier is not None else load_classifier()
    prompts, colours, classes = adherence_prompts(n, seed)
    images = sample(pipe, prompts, seed=seed, steps=steps, guidance=guidance)
    pc, pk = predict(classifier, images)
    res = {
        "n": n, "seed": seed, "steps": steps, "guidance": guidance,
        "class_adherence": float(np.mean(pc == classes)),
        "colour_adherence": float(np.mean(pk == colours)),
        "both": float(np.mean((pc == classes) & (pk == colours))),
    }
    if return_images:
        res["images"] = images
        res["prompts"] = prompts
    return res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m steer.lab.classifier")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", default=str(DEFAULT_PATH))
    t.add_argument("--steps", type=int, default=800)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--init", default=None, help="continue training these weights")
    a = sub.add_parser("adherence")
    a.add_argument("--model", required=True)
    a.add_argument("--classifier", default=str(DEFAULT_PATH))
    a.add_argument("--n", type=int, default=240)
    a.add_argument("--steps", type=int, default=25)
    a.add_argument("--guidance", type=float, default=5.0)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--grid", default=None, help="write the first 80 samples as a PNG grid here")
    a.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    if args.cmd == "train":
        _, m = train_classifier(args.out, steps=args.steps, threads=args.threads, lr=args.lr, seed=args.seed, init=args.init)
        print(json.dumps(m, indent=1))
    else:
        torch.set_num_threads(args.threads)
        pipe = load_pipeline(args.model)
        res = adherence(pipe, n=args.n, seed=args.seed, steps=args.steps, guidance=args.guidance,
                        classifier=load_classifier(args.classifier), return_images=bool(args.grid))
        if args.grid:
            from PIL import Image

            grid = Image.fromarray(D.to_uint8_grid(res.pop("images")[:80], nrow=10))
            grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(args.grid)
            res.pop("prompts")
        res.update(model=args.model, classifier=args.classifier)
        print(json.dumps(res, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
