"""Editing a given image from its inversion (`steer.inversion`), against image-to-image and the prompt rewrite.

    python bench/inversion_edit.py [--seeds 2] [--out docs/steering/edit/inversion]

Fixed before the first run (2026-12-02, session 21): the sources, prompts, seeds and judges of `bench/image_edit.py`
(the demo model's own images of the matrix's contradicting prompts for each shipped direction, 8 prompts x 2 seeds,
DDIM 20, guidance 5). Each source is inverted for the prompt that leaves the target's attribute open ("a sneaker",
"a red item"; `invert_image`, the inversion's noise drawn from the source's seed) and replayed steered by the bundled
direction at scales 0, 0.25, 0.5, 0.75, 1.0 and 2.0 (2.0: whether a given picture needs more than the calibrated
push; not used for the pass counts at 1.0). In the same run: image-to-image at strength 0.8 (the CLI's default edit)
steered at the same scales, and the two prompt rewrites ("a blue sneaker"): replayed from the inversion (the
edit-friendly inversion's own way to edit) and image-to-image at 0.8. Judges as in the matrix: success, kept (the
other attribute of each method's scale-0 edit: for the inversion the picture itself), pixel colour, break; a pass is
success >= 0.8, kept >= 0.8, break <= 5 %. Also recorded: how far the inversion's scale-0 image is from the source
(max |difference| / 255 against the VAE's own reconstruction). Results: ``results.json``, ``summary.md``, one grid
(rows: two sources for each of four targets; columns: source, inversion at 0 -> 1 and 2, inversion rewrite,
image-to-image at 0 and 1, its rewrite).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from image_edit import open_prompt, rewrite, to_np  # noqa: E402
from steering_matrix import MONO, TUNING, C, K, cell_metrics, direction_name, judge, prompts_for  # noqa: E402

from steer.assets import bundled_directions, default_model  # noqa: E402
from steer.cli.loading import load_pipeline  # noqa: E402
from steer.inversion import invert_image  # noqa: E402
from steer.lab.classifier import load_classifier  # noqa: E402
from steer.pipelines.factory import editing_pipeline  # noqa: E402
from steer.vectors import SteeringVector  # noqa: E402

GRID_TARGETS = ("blue", "white", "bag", "dress")
SCALES = (*MONO, 2.0)
STRENGTH = 0.8


def passes(m: dict) -> bool:
    return m["success"] >= 0.8 and m["kept"] >= 0.8 and m["break"] <= 0.05


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--seed-base", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--targets", nargs="+", default=None)
    ap.add_argument("--out", default=str(ROOT / "docs" / "steering" / "edit" / "inversion"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    text = load_pipeline(default_model(), "cpu", progress=False)
    edit = editing_pipeline(text, "img2img")
    classifier = load_classifier()
    bundled = bundled_directions(default_model())
    kw = dict(num_inference_steps=args.steps, guidance_scale=args.guidance)
    rows, grid, recon = [], [], []
    for kind, values in (("colour", C), ("class", K)):
        for target in values:
            name = direction_name(target)
            if (args.targets and target not in args.targets) or name not in bundled:
                continue
            vector = SteeringVector.load(bundled[name])
            contra = prompts_for(kind, target)["contra"]
            sources_p = [p for _ in range(args.seeds) for p in contra]
            seeds = [args.seed_base + s for s in range(args.seeds) for _ in contra]
            sources = text(sources_p, generator=[torch.Generator().manual_seed(s) for s in seeds], **kw).images
            inv_out = {s: [] for s in SCALES}
            inv_rewrite = []
            for src, prompt, seed in zip(sources, sources_p, seeds, strict=True):
                inversion = invert_image(text, src, open_prompt(kind, prompt), generator=torch.Generator().manual_seed(seed), **kw)
                made = inversion.edit(text, rows=len(SCALES), steering=vector, steering_scale=list(SCALES)).images
                for s, im in zip(SCALES, made, strict=True):
                    inv_out[s].append(im)
                rewritten = inversion.pipeline(text)(**{**inversion.call_kwargs(1), "prompt": [rewrite(kind, target, prompt)]}).images[0]
                inv_rewrite.append(rewritten)
                with torch.no_grad():
                    vae = text.image_processor.postprocess(text.vae.decode(text.vae.encode(
                        text.image_processor.preprocess(src)).latent_dist.mode()).sample, output_type="pil")[0]
                recon.append(int(np.abs(np.asarray(inv_out[0.0][-1], dtype=np.int16) - np.asarray(vae, dtype=np.int16)).max()))

            def gens(seeds=seeds):
                return [torch.Generator().manual_seed(s) for s in seeds]

            opened = [open_prompt(kind, p) for p in sources_p]
            i2i = {s: edit(opened, image=sources, strength=STRENGTH, generator=gens(), steering=vector, steering_scale=s, **kw).images
                   for s in MONO}
            i2i_rewrite = edit([rewrite(kind, target, p) for p in sources_p], image=sources, strength=STRENGTH, generator=gens(), **kw).images
            index = (C if kind == "colour" else K).index(target)
            inv_ref, i2i_ref = judge(classifier, to_np(inv_out[0.0])), judge(classifier, to_np(i2i[0.0]))
            src_ref = judge(classifier, to_np(sources))
            row = {
                "kind": kind, "target": target, "split": "tuning" if target in TUNING[kind] else "held-out",
                "inversion": {str(s): cell_metrics(judge(classifier, to_np(inv_out[s])), inv_ref, kind, index) for s in SCALES},
                "inversion_rewrite": cell_metrics(judge(classifier, to_np(inv_rewrite)), inv_ref, kind, index),
                "img2img": {str(s): cell_metrics(judge(classifier, to_np(i2i[s])), i2i_ref, kind, index) for s in MONO},
                "img2img_rewrite": cell_metrics(judge(classifier, to_np(i2i_rewrite)), i2i_ref, kind, index),
                # the scale-0 images against the source's own attribute: does the method keep the picture?
                "scale0_keeps_source": {
                    "inversion": cell_metrics(judge(classifier, to_np(inv_out[0.0])), src_ref, kind, index)["kept"],
                    "img2img": cell_metrics(judge(classifier, to_np(i2i[0.0])), src_ref, kind, index)["kept"],
                },
            }
            rows.append(row)
            a, b, r1, r2 = row["inversion"]["1.0"], row["img2img"]["1.0"], row["inversion_rewrite"], row["img2img_rewrite"]
            print(f"{kind:6} {target:11} inversion at 1.0 {a['success']:.2f}/{a['kept']:.2f} (2.0: {row['inversion']['2.0']['success']:.2f}"
                  f"/{row['inversion']['2.0']['kept']:.2f}) rewrite {r1['success']:.2f}/{r1['kept']:.2f} | img2img 0.8 at 1.0 "
                  f"{b['success']:.2f}/{b['kept']:.2f} rewrite {r2['success']:.2f}/{r2['kept']:.2f} | scale 0 keeps the source "
                  f"{row['scale0_keeps_source']['inversion']:.2f} / {row['scale0_keeps_source']['img2img']:.2f}", flush=True)
            if target in GRID_TARGETS:
                for i in (i for i in (0, len(contra)) if i < len(sources)):
                    grid.append([sources[i], *(inv_out[s][i] for s in SCALES), inv_rewrite[i], i2i[0.0][i], i2i[1.0][i], i2i_rewrite[i]])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if grid:
        w = grid[0][0].width
        canvas = Image.new("RGB", (w * len(grid[0]), w * len(grid)))
        for r, images in enumerate(grid):
            for c, im in enumerate(images):
                canvas.paste(im, (c * w, r * w))
        canvas.resize((canvas.width * 3, canvas.height * 3), Image.NEAREST).save(out / "inversion.png")
    lines = ["| kind | split | inversion at 1.0 | inversion at 2.0 | inversion rewrite | img2img 0.8 at 1.0 | img2img rewrite | scale 0 keeps the source (inversion / img2img) |",
             "|---|---|---|---|---|---|---|---|"]
    for kind in ("colour", "class"):
        for split in ("tuning", "held-out"):
            sel = [r for r in rows if r["kind"] == kind and r["split"] == split]
            if not sel:
                continue

            def count(get, sel=sel):
                return f"{sum(passes(get(r)) for r in sel)}/{len(sel)}"

            keep = np.mean([r["scale0_keeps_source"]["inversion"] for r in sel]), np.mean([r["scale0_keeps_source"]["img2img"] for r in sel])
            lines.append(f"| {kind} | {split} | {count(lambda r: r['inversion']['1.0'])} | {count(lambda r: r['inversion']['2.0'])} | "
                         f"{count(lambda r: r['inversion_rewrite'])} | {count(lambda r: r['img2img']['1.0'])} | "
                         f"{count(lambda r: r['img2img_rewrite'])} | {keep[0]:.2f} / {keep[1]:.2f} |")
    lines.append(f"\nInversion at scale 0 against the VAE's reconstruction of the source: max |difference| {max(recon)}/255 over {len(recon)} sources.")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows, "reconstruction_max_diff": recon, "seconds": round(time.time() - start),
                                                  "machine": platform.platform(), "args": vars(args)}, indent=1))
    print("\n".join(lines))
    print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
