"""Can the model itself tell that a colour edit is changing the object? (the denoiser as its own class judge; screen)

    python bench/class_keep_screen.py --targets blue,red,green,ankle\\ boot,trouser,bag \\
        [--out docs/steering/class_keep/tuning.json]

Cyan fails the matrix at 1.0 on kept (its garments drift to bags, 0.75 / 0.78) and passes at 0.75: the calibration's
full edit overshoots it, and neither the latent distance nor the layout (`bench/layout_drift_screen.py`) singles it
out. The open prompts the calibration steers name what the edit should keep ("a t-shirt", "a sneaker"; "a red item"
for class edits), so the denoiser can judge it without a classifier: noise a final latent at a few timesteps, predict
the noise under each open prompt of the set, and take the prompt with the smallest error (a diffusion classifier,
Li et al. 2023, "Your Diffusion Model is Secretly a Zero-Shot Classifier"; the same noise for every prompt).
``kept`` is the share of steered samples judged as their own open prompt; the model's own prompt edit (the
positives' samples, "a cyan t-shirt" judged among "a t-shirt", "a sneaker", ...) gives the level an edit may reach.

For each target, learned with the defaults (guidance 5, 20 steps, as the matrix): the calibration's open prompts and
seeds (0 .. n-1), unsteered, at 0.5, 0.75, 1.0, 1.25 of the calibrated strength, and the positives; for each the
denoiser's kept (argmax and the mean probability of the own prompt under a softmax of the errors) beside the lab
classifier's kept on the decoded images (the matrix's judge, for comparison only).

Decided on the six tuning targets (blue, red, green, ankle boot, trouser, bag; `docs/steering/class_keep/tuning_colour.json`, `tuning_class.json`)
before any held-out target was run: the denoiser keeps 6 of 6 at every fraction for all six (their full edits keep the
object and the colour), so the rule screened on the held-out ones is "the full edit is the largest of 1.0, 0.75, 0.5
of the calibrated strength whose steered samples' denoiser kept is at least the positives' own"; it would change no
tuning target. Adopt only if it changes no held-out target that passes at 1.0 to a fraction it fails at, and moves
cyan into its band.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from steering_matrix import C, K, prompts_for  # noqa: E402

from steer.calibrate import sample_latents  # noqa: E402
from steer.cli.loading import load_pipeline  # noqa: E402
from steer.lab.classifier import load_classifier  # noqa: E402
from steer.wording import open_prompts  # noqa: E402

TIMESTEPS = (100, 300, 500, 700)


@torch.no_grad()
def prompt_errors(pipe, latents: torch.Tensor, candidates: list[str], timesteps=TIMESTEPS, seed: int = 0) -> torch.Tensor:
    """[N, K] mean noise-prediction error of each latent under each candidate prompt (conditional only)."""
    emb = pipe.encode_prompt(candidates, pipe._execution_device, 1, False)[0]  # [K, L, D]
    n, k = len(latents), len(candidates)
    g = torch.Generator().manual_seed(seed)
    err = torch.zeros(n, k)
    for t in timesteps:
        noise = torch.randn(latents.shape, generator=g)
        tt = torch.tensor([t])
        x_t = pipe.scheduler.add_noise(latents, noise, tt)
        x = x_t.repeat_interleave(k, 0)
        e = emb.repeat(n, 1, 1)
        eps = pipe.unet(x, tt.expand(n * k), encoder_hidden_states=e).sample
        err += ((eps - noise.repeat_interleave(k, 0)) ** 2).flatten(1).mean(1).reshape(n, k)
    return err / len(timesteps)


def denoiser_kept(err: torch.Tensor, own: list[int], temperature: float) -> tuple[float, float]:
    """(argmax share, mean softmax probability) of each latent's own candidate."""
    idx = torch.tensor(own)
    arg = float((err.argmin(1) == idx).float().mean())
    p = torch.softmax(-err / temperature, 1)[torch.arange(len(own)), idx]
    return arg, float(p.mean())


@torch.no_grad()
def decode(pipe, latents: torch.Tensor) -> np.ndarray:
    img = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return ((img.clamp(-1, 1) + 1) / 2).float().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--targets", default=",".join(C + K))
    ap.add_argument("--samples", type=int, default=6, help="the calibration's seeds 0 .. n-1 (the default: its own 6)")
    ap.add_argument("--temperature", type=float, default=0.002)
    ap.add_argument("--out", default="docs/steering/class_keep/screen.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    pipe = load_pipeline(args.model, "cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    classifier = load_classifier()
    kw = dict(num_inference_steps=20, guidance_scale=5.0)
    seeds = list(range(args.samples))
    fractions = (0.0, 0.5, 0.75, 1.0, 1.25)
    rows = []
    for t in args.targets.split(","):
        kind = "colour" if t in C else "class"
        P = prompts_for(kind, t)
        v = pipe.learn_direction(P["positive"], P["negative"], progress=False, **kw)
        pos = [P["positive"][i % len(P["positive"])] for i in seeds]
        opened = open_prompts(pos, [P["negative"][i % len(P["negative"])] for i in seeds])
        candidates = sorted(set(open_prompts(P["positive"], P["negative"])))
        own = [candidates.index(o) for o in opened]
        z_pos = sample_latents(pipe, pos, seeds, flat=False, **kw)
        z = sample_latents(pipe, [p for _ in fractions for p in opened], [s for _ in fractions for s in seeds], flat=False,
                           steering=v, steering_scale=[f for f in fractions for _ in seeds], batch_size=8, **kw)
        sets = {"positives": z_pos, **{f"{f:g}": z[i * len(seeds):(i + 1) * len(seeds)] for i, f in enumerate(fractions)}}
        row = {"target": t, "kind": kind, "strength": v.metadata["calibration"]["strength"], "candidates": candidates, "sets": {}}
        for name, lat in sets.items():
            err = prompt_errors(pipe, lat, candidates)
            arg, prob = denoiser_kept(err, own, args.temperature)
            cls_logits, col_logits = classifier(torch.as_tensor(decode(pipe, lat)))
            if kind == "colour":  # the other attribute: the class of the open prompt
                truth = [K.index(o.split(" ", 1)[1]) for o in opened]
                lab = float((cls_logits.argmax(1) == torch.tensor(truth)).float().mean())
            else:
                truth = [C.index(o.split(" ")[1]) for o in opened]
                lab = float((col_logits.argmax(1) == torch.tensor(truth)).float().mean())
            row["sets"][name] = {"denoiser_kept": round(arg, 3), "denoiser_p_own": round(prob, 3), "lab_kept": round(lab, 3),
                                 "predicted": [candidates[j] for j in err.argmin(1).tolist()]}
        print(json.dumps({k: v for k, v in row.items() if k != "candidates"}), flush=True)
        rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "seconds": round(time.time() - t0), "timesteps": TIMESTEPS, "rows": rows}, indent=1))
    print(f"{time.time() - t0:.0f} s -> {out}")


if __name__ == "__main__":
    main()
