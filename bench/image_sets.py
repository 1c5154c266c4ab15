"""Do directions learned from IMAGE sets move generations toward the positive images? (demo model, tuning colours)

    python bench/image_sets.py        # ~4 min on 1 CPU thread -> docs/steering/image_sets/ (results.json, grids)

Image sets from the lab data: 16 Fashion-MNIST test items tinted the target colour (positive) and 16 other items
tinted the contrast colour (negative), as the model was trained on. Tuning pairs only (docs/steering.md's split: blue,
red, green): blue vs red, red vs blue, green vs blue. Each is learned with `learn_direction`'s defaults for images
(mode reference, mean_diff, timestep 10, empty prompt) at three kinds of site: the default (up_blocks.0 resnets + the
first up_blocks.1 resnet), every transformer block output, every cross-attention output (``attn2``), and applied with
the direction's recommended settings (conditional branch, add, window (0.45, 0.95)) at strengths of both signs to the
steering matrix's 8 open prompts x 2 seeds. Judged by the lab classifier's colour head, the pixel colour measure, the
class kept (classifier, vs the unsteered image) and the break measure; also the cosine between the directions of
different pairs at each site (a site whose directions do not depend on the pair cannot learn a colour).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from steering_matrix import OUT, C, cell_metrics, judge, prompts_for  # noqa: E402

from steer.cli.loading import load_pipeline  # noqa: E402
from steer.lab import data as D  # noqa: E402
from steer.lab.classifier import load_classifier  # noqa: E402

PAIRS = (("blue", "red"), ("red", "blue"), ("green", "blue"))  # tuning colours only
SITES = {"resnets (default)": None, "blocks": "*attentions.[0-9]", "attn2": "attn2"}
STRENGTHS = (-2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0)


def tinted(colour: str, n: int, start: int) -> list[torch.Tensor]:
    gray, _ = D.load_fashion_mnist("test")
    return [torch.from_numpy(x) for x in D.colourize(gray[start : start + n], np.full(n, C.index(colour)))]


def sample(pipe, prompts, seeds, **kw) -> np.ndarray:
    items = [(p, s) for s in seeds for p in prompts]
    images = pipe([p for p, _ in items], generator=[torch.Generator().manual_seed(1000 + s) for _, s in items],
                  num_inference_steps=20, guidance_scale=5.0, output_type="np", **kw).images
    return images.transpose(0, 3, 1, 2).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(OUT / "image_sets"))
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    pipe, classifier = load_pipeline(None, "cpu"), load_classifier()
    rows, directions = [], {}
    for target, contrast in PAIRS:
        pos, neg = tinted(target, 16, 0), tinted(contrast, 16, 100)
        opens = prompts_for("colour", target)["open"]
        base = sample(pipe, opens, range(args.seeds))
        ref = judge(classifier, base)
        for site, layers in SITES.items():
            vector = pipe.learn_direction(pos, neg, layers=layers, progress=False)
            directions[(target, contrast, site)] = vector
            strip = []
            for strength in STRENGTHS:
                images = base if strength == 0 else sample(pipe, opens, range(args.seeds), steering=vector, steering_scale=strength)
                m = cell_metrics(judge(classifier, images), ref, "colour", C.index(target))
                rows.append({"target": target, "contrast": contrast, "site": site, "strength": strength,
                             **{k: round(v, 3) for k, v in m.items() if k in ("success", "pixel_success", "kept", "break", "p_target")}})
                strip.append(images[: len(opens)])
                print(target, contrast, site, strength, {k: v for k, v in rows[-1].items() if k not in ("target", "contrast", "site", "strength")}, flush=True)
            arr = np.concatenate([np.concatenate(list(s.transpose(0, 2, 3, 1)), 1) for s in strip], 0)
            name = f"grid_{target}_vs_{contrast}_{site.split()[0]}.png"
            Image.fromarray((arr.clip(0, 1) * 255).astype(np.uint8)).resize((arr.shape[1] * 2, arr.shape[0] * 2), Image.NEAREST).save(out / name)
    cosines = []
    for site in SITES:
        a, b, c = (directions[(t, k, site)] for t, k in PAIRS)
        for layer in a.layers:
            x, y, z = (v.directions[layer].flatten().double() for v in (a, b, c))
            cos = lambda p, q: round(float(p @ q / p.norm() / q.norm()), 3)  # noqa: E731
            cosines.append({"site": site, "layer": layer, "blue-red vs red-blue": cos(x, y), "green-blue vs red-blue": cos(z, y)})
    summary = []
    for target, contrast in PAIRS:
        for site in SITES:
            cells = [r for r in rows if (r["target"], r["contrast"], r["site"]) == (target, contrast, site)]
            ok = [r for r in cells if r["success"] >= 0.8 and r["pixel_success"] >= 0.8 and r["kept"] >= 0.8 and r["break"] <= 0.05]
            pos = [r["p_target"] for r in cells if r["strength"] >= 0]
            summary.append({"target": target, "contrast": contrast, "site": site, "passes_at": [r["strength"] for r in ok],
                            "p_target_non_decreasing_0_to_2": bool(all(b >= a - 0.0625 for a, b in zip(pos, pos[1:], strict=False)))})
    (out / "results.json").write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "seconds": round(time.time() - start),
                                                 "summary": summary, "cosines": cosines, "rows": rows}, indent=1))
    for s in summary:
        print(s)
    print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
