"""Ship the sliders that pass `bench/two_sided.py` at both ends into assets/directions. Run from the repository root.

    python bench/ship_sliders.py [--results docs/steering/two_sided/results.json]
        [--contra docs/steering/two_sided/contra/results.json] [--out assets/directions]

Each pair whose two-sided slider passed at +1 and -1 on the attribute-open prompts (the bench's rule) is learned again
with exactly the bench's prompts and settings (`learn_direction(..., two_sided=True)`, DDIM 20, guidance 5; learning
is deterministic: each side's calibrated strength and each flip's fitted strength and window are checked against what
the two runs recorded) and saved as ``<positive>_<negative>_slider.safetensors`` (+1 toward the positive attribute,
-1 toward the negative one) with both runs' numbers in ``metadata["benchmark"]``. ``sliders.md`` next to them is
regenerated with the table of every pair, shipped or not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from two_sided import pair_prompts  # noqa: E402

from steer.assets import DIRECTIONS_DIR  # noqa: E402
from steer.cli.loading import load_pipeline  # noqa: E402

KEYS = ("success", "kept", "break")
GALLERY_NOTE = ("on the open prompts every slider runs from its - end through the prompt's own image to its + end (the class "
                "sliders' open prompt is the calibration's \"a red\"); a stated end is held toward itself and turned at the other "
                "end, passing through another hue or a dark garment at +-0.5 (\"a red t-shirt\" dark green at -0.5, blue at -1); "
                "the failures the table lists show: green/red's \"a green t-shirt\" goes dark red-brown at -1, white/orange's "
                "\"a white t-shirt\" dark olive at -1.")


def slider_name(pos: str, neg: str) -> str:
    return f"{pos}_{neg}_slider".replace(" ", "_").replace("-", "")


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="docs/steering/two_sided/results.json")
    ap.add_argument("--contra", default="docs/steering/two_sided/contra/results.json")
    ap.add_argument("--out", default=str(DIRECTIONS_DIR))
    args = ap.parse_args()
    torch.set_num_threads(1)
    results, contra = json.loads(Path(args.results).read_text()), json.loads(Path(args.contra).read_text())
    pipe = load_pipeline(None, "cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    out, rows = Path(args.out), []
    for slider in (s for s in results["sliders"] if s["method"] == "two-sided"):
        pos, neg = slider["pair"]
        stated = {c["side"]: c for c in contra["cells"] if c["pair"] == [pos, neg] and c["method"] == "slider"}
        rows.append((slider, stated))
        if not slider["pass"]:
            continue
        kind = slider["kind"]
        P = pair_prompts(kind, pos, neg)
        v = pipe.learn_direction(P["positive"], P["negative"], two_sided=True, num_inference_steps=20, guidance_scale=5.0,
                                 progress=False, name=f"{pos} <-> {neg}")
        logged = next(x for x in results["learned"] if x["pair"] == [pos, neg])
        for side, key in ((v, "positive_side_strength"), (v.opposite, "negative_side_strength")):
            got, want = side.metadata["calibration"]["strength"], logged[key]
            if abs(got - want) > 1e-3 * max(1.0, abs(want)):
                raise SystemExit(f"{pos} <-> {neg}: re-learned {key} {got} differs from the bench's {want}; rerun it")
        for side, which in ((v, "positive"), (v.opposite, "negative")):
            fit = next(f for f in contra["fits"] if f["pair"] == [pos, neg] and f["side"] == which)
            flip = side.metadata["flip"]
            if abs(flip["strength"] - fit["strength"]) > 1e-3 or flip["window"] != fit["window"]:
                raise SystemExit(f"{pos} <-> {neg}: re-learned {which} flip {flip} differs from the bench's {fit}; rerun it")
        v.metadata["benchmark"] = {
            "bench": "bench/two_sided.py (docs/steering.md, 'Sliders between two attributes')", "split": slider["split"],
            "open_ends": {end: {k: slider[side][k] for k in KEYS} for end, side in (("+1", "positive"), ("-1", "negative"))},
            "stated_ends": {end: {k: stated[side][k] for k in (*KEYS, "pass")} for end, side in (("+1", "positive"), ("-1", "negative"))},
        }
        path = v.save(out / f"{slider_name(pos, neg)}.safetensors")
        print("wrote", path, flush=True)
    write_table(out, rows, args)


def write_table(out: Path, rows: list, args: argparse.Namespace) -> None:
    lines = [
        "# Bundled sliders (demo model)",
        "",
        "`<positive>_<negative>_slider`: a two-sided direction (`learn_direction(..., two_sided=True)`, `steer learn "
        "--two-sided`) learned from the prompts of `bench/two_sided.py` (\"a red t-shirt\", ... vs \"a blue t-shirt\", ...; "
        "classes \"a red trouser\", ... vs \"a red bag\", ...; DDIM 20, guidance 5). `steering_scale=1` is the full edit toward "
        "the positive attribute, -1 toward the negative one, 0 the prompt's own image; a prompt that states one end is "
        "turned to the other (that end taken away at the strength and window fitted while learning), and a prompt slid "
        "toward the end it states is left as it is. Shipped when the bench measured a pass at both ends on attribute-open "
        "prompts (success >= 0.8, other attribute kept >= 0.8, break <= 5 %, success never falling by more than an image "
        "from 0 toward the end; 2 seeds x 8 prompts). Contradicting columns: `bench/two_sided.py --contra`, the slider at "
        "the end on prompts that state the other end (pass: success >= 0.5, kept >= 0.8, break <= 5 %). Regenerate: "
        f"`python bench/ship_sliders.py{'' if args.out == str(DIRECTIONS_DIR) else ' --out ' + args.out}`. Full results: "
        "docs/steering.md, \"Sliders between two attributes\".",
        "",
        "![every bundled slider from -1 to 1 on an open prompt and on prompts that state each end](sliders.png)",
        "",
        f"*`python scripts/bundled_gallery.py --sliders`, seed 1000, DDIM 20, guidance 5; looked at: {GALLERY_NOTE}*",
        "",
        "| slider | kind | split | shipped | open +1 success / kept | open -1 success / kept | stated, slid to +1: success / kept | stated, slid to -1: success / kept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for slider, stated in rows:
        pos, neg = slider["pair"]

        def cell(m: dict) -> str:
            return f"{m['success']:.2f} / {m['kept']:.2f}" + (" (pass)" if m.get("pass") else "")

        lines.append(f"| {slider_name(pos, neg) if slider['pass'] else f'{pos} / {neg}'} | {slider['kind']} | {slider['split']} | "
                     f"{'yes' if slider['pass'] else 'no'} | {cell(slider['positive'])} | {cell(slider['negative'])} | "
                     f"{cell(stated['positive'])} | {cell(stated['negative'])} |")
    (out / "sliders.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
