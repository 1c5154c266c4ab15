"""A diagnostic (session 40): does the layout of a take-away fit's steered samples tell where a contradicting colour
loses its class? Per (target, source) pair of the matrix's contradicting colour prompts: the fit's colour curves, the
layout agreement (`steer.appearance.layout_signatures`: the decoded grayscale over 8 x 8 cells, correlated) of the
steered samples with the same-seed source samples along the grid (and of the rewritten targets with the sources, the
baseline), and the judged success / kept of each source's prompts at the fit (seeds 3000 / 5000 / 7000, 4 draws).

    python bench/take_away_layout_diag.py red,green,blue docs/steering/take_away_late/layout_diag_tuning.json

The fits ran with the windows of their day (session 39: the first half and the whole run); the answer was no
(docs/steering.md, "Session 40").
"""
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from contra_removal import generators, source_of  # noqa: E402
from steering_matrix import TUNING, C, judge, prompts_for  # noqa: E402

import steer.take_away as ta  # noqa: E402
from steer.appearance import layout_signatures  # noqa: E402
from steer.cli.loading import load_pipeline  # noqa: E402
from steer.lab.classifier import load_classifier  # noqa: E402
from steer.vae_codec import codec_vae  # noqa: E402


def captured_fit(pipe, target, away):
    """`fit_take_away` over session 39's windows, with the latents it sampled: (fit, rewritten targets, sources, each
    window's steered samples)."""
    sampled, steered = [], []
    plain_sample, plain_steered = ta.sample_latents, ta._steered_samples

    def sample(*a, **k):
        sampled.append(plain_sample(*a, **k))
        return sampled[-1]

    def steer(*a, **k):
        steered.append(plain_steered(*a, **k))
        return steered[-1]

    ta.sample_latents, ta._steered_samples = sample, steer
    try:
        fit = pipe.fit_take_away(target, away, guidance_scale=5.0, windows=ta.WINDOWS, negative="remove")  # as session 40 ran it
    finally:
        ta.sample_latents, ta._steered_samples = plain_sample, plain_steered
    return fit, sampled[0], sampled[1], steered[0][0]


def layout_curves(pipe, fit, z_target, z_source, runs) -> dict:
    """The rewritten targets' layout agreement with the sources, and each window's steered samples' along the grid."""
    vae = codec_vae(pipe)
    st, ss = layout_signatures(pipe, z_target, vae=vae), layout_signatures(pipe, z_source, vae=vae)
    per = {}
    for w, z in zip(ta.WINDOWS, runs, strict=True):
        sig = layout_signatures(pipe, z.reshape(-1, *z_target.shape[1:]), vae=vae).reshape(len(fit.grid), z_source.shape[0], -1)
        per[f"{w[0]:g},{w[1]:g}"] = {"vs_source": [float((g * ss).sum(1).mean()) for g in sig],
                                     "vs_target": [float((g * st).sum(1).mean()) for g in sig]}
    return {"fit": fit.to_dict(), "target_vs_source": float((st * ss).sum(1).mean()), "layout": per}


def judged_per_source(pipe, classifier, vectors, target, fits, prompts, sources) -> dict:
    """Each source's prompts at their pair's fit on the three seed sets: success, kept and pixel success."""
    per_source = {s: {"success": [], "kept": [], "pixel": []} for s in set(sources)}
    for base_seed in (3000, 5000, 7000):
        seeds = [base_seed + s * 8 + i for s in range(4) for i in range(8)]
        ref = judge(classifier, pipe(prompts, generator=generators(seeds), num_inference_steps=20, guidance_scale=5.0,
                                     output_type="np").images.transpose(0, 3, 1, 2))
        images = np.zeros((len(prompts), 3, 32, 32), dtype=np.float32)
        for window in sorted({fits[s].window for s in sources}):
            idx = [i for i, s in enumerate(sources) if fits[s].window == window]
            names = sorted({sources[i] for i in idx})
            scale = torch.zeros(len(idx), 1 + len(names))
            for r, i in enumerate(idx):
                scale[r, 0], scale[r, 1 + names.index(sources[i])] = ta.pair_scales(fits[sources[i]].strength)
            images[idx] = pipe([prompts[i] for i in idx], generator=generators([seeds[i] for i in idx]),
                               steering=[vectors[target]] + [vectors[n] for n in names], steering_scale=scale,
                               steering_negative="remove", steering_window=window, num_inference_steps=20, guidance_scale=5.0,
                               output_type="np").images.transpose(0, 3, 1, 2)
        j, t = judge(classifier, images), C.index(target)
        for i, s in enumerate(sources):
            per_source[s]["success"].append(bool(j["colour"][i] == t))
            per_source[s]["kept"].append(bool(j["class"][i] == ref["class"][i]))
            per_source[s]["pixel"].append(bool(j["pixel_colour"][i] == t))
    return {s: {k: float(np.mean(v)) for k, v in d.items()} | {"n": len(d["success"])} for s, d in per_source.items()}


def main() -> None:
    targets, out = sys.argv[1].split(","), Path(sys.argv[2])
    torch.set_num_threads(1)
    t0 = time.time()
    pipe, classifier = load_pipeline(None, "cpu"), load_classifier()
    vectors = {v: pipe.learn_direction(prompts_for("colour", v)["positive"], prompts_for("colour", v)["negative"],
                                       num_inference_steps=20, guidance_scale=5.0, progress=False) for v in C}
    rows = []
    for target in targets:
        prompts = [p for _ in range(4) for p in prompts_for("colour", target)["contra"]]
        sources = [source_of("colour", p) for p in prompts]
        fits, curves = {}, {}
        for src in sorted(set(sources)):
            fit, z_target, z_source, runs = captured_fit(pipe, vectors[target], vectors[src])
            fits[src], curves[src] = fit, layout_curves(pipe, fit, z_target, z_source, runs)
            print(target, src, round(fit.strength, 3), fit.window, f"base {curves[src]['target_vs_source']:.3f}",
                  {k: [round(x, 2) for x in v["vs_source"]] for k, v in curves[src]["layout"].items()}, f"{time.time() - t0:.0f}s", flush=True)
        for src, cell in judged_per_source(pipe, classifier, vectors, target, fits, prompts, sources).items():
            curves[src]["judged"] = cell
            print(target, src, cell, flush=True)
        rows.append({"target": target, "split": "tuning" if target in TUNING["colour"] else "held-out", "pairs": curves})
        out.write_text(json.dumps(rows, indent=1))
    print("done", time.time() - t0)


if __name__ == "__main__":
    main()
