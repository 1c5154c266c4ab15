"""Ship the sliders that pass `bench/two_sided.py` at both ends into assets/directions. Run from the repository root.

    python bench/ship_sliders.py [--results docs/steering/two_sided/results.json]
        [--contra docs/steering/two_sided/contra/results.json] [--out assets/directions]
        [--replication OPEN.json CONTRA.json ...] [--keep red_blue ...]

Each pair whose two-sided slider passed at +1 and -1 on the attribute-open prompts (the bench's rule) is learned again
with exactly the bench's prompts and settings (`learn_direction(..., two_sided=True)`, DDIM 20, guidance 5; learning
is deterministic: each side's calibrated strength and each flip's fitted strength and window are checked against what
the two runs recorded) and saved as ``<positive>_<negative>_slider.safetensors`` (+1 toward the positive attribute,
-1 toward the negative one) with the runs' numbers in ``metadata["benchmark"]``. ``--replication`` (repeatable): the open and
contradicting runs of the same bench on other images (``--noise per-image --seeds 4 --seed-base 3000``: 32 independent
images a side); a pair then ships only where its slider passes on the open prompts in every run, and each
replication's ends are recorded and tabled beside the first run's; ``--keep red_blue`` ships a pair that falls short
all the same, learned and checked like the others (so its file is the learning the table's numbers measured), and
marked so in the table. ``sliders.md`` next to them is regenerated with the table of every pair,
shipped or not.
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
KEPT_NOTE = ("; a slider *kept though it falls short* does not pass every run listed (an earlier measurement passed it) "
             "and ships as these runs learned it, its row their numbers")
RESULTS, CONTRA = "docs/steering/two_sided/results.json", "docs/steering/two_sided/contra/results.json"
GALLERY_NOTE = ("on the open prompts every slider runs from its - end through the prompt's own image to its + end (the "
                "class sliders' open prompt is the calibration's \"a red\"); a stated end is held toward itself and turned "
                "at the other end, passing through another hue or a dark garment at +-0.5, where the flip's word swap "
                "(session 41) is half done (\"a red t-shirt\" olive at -0.5, blue at -1; \"a blue t-shirt\" dark green at "
                "+0.5, red at +1; \"a green t-shirt\" olive-brown at -0.5, red at -1, where it had been a bright red at -0.5"
                " with session 40's flips); the removal and addition alone pass through third hues too, and no schedule of"
                " the swap tried gives a straight path (docs/steering.md \"Session 42\"); red/blue's open +1, a dark red "
                "while its sides shared one window, is now as bright a red as +0.5 (each side in its own window: the red "
                "side the whole run), and since each colour side's full edit is where its colour comes closest (session "
                "40) it reads red 0.97 on both independent sets, where it had peaked at +0.75 and read 0.81 and 0.84.")


def slider_name(pos: str, neg: str) -> str:
    return f"{pos}_{neg}_slider".replace(" ", "_").replace("-", "")


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=RESULTS)
    ap.add_argument("--contra", default=CONTRA)
    ap.add_argument("--out", default=str(DIRECTIONS_DIR))
    ap.add_argument("--replication", nargs=2, metavar=("OPEN", "CONTRA"), action="append", default=[],
                    help="the open and contradicting results of a replication run (repeatable; ships only what passes every run)")
    ap.add_argument("--keep", nargs="+", default=[], metavar="POS_NEG",
                    help="sliders (positive_negative, e.g. red_blue) that do not pass every run but stay shipped, "
                         "learned as the runs learned them (the table says they fall short)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results, contra = json.loads(Path(args.results).read_text()), json.loads(Path(args.contra).read_text())
    runs = [(results, contra)]
    runs += [tuple(json.loads(Path(f).read_text()) for f in pair) for pair in args.replication]
    out, rows = Path(args.out), []
    for slider in (s for s in results["sliders"] if s["method"] == "two-sided"):
        pos, neg = slider["pair"]
        per_run = [(_slider(r, pos, neg), _stated(c, pos, neg)) for r, c in runs]
        passed = all(s["pass"] for s, _ in per_run)
        rows.append((per_run, "kept" if not passed and pair_key(pos, neg) in args.keep else passed))
    check_keep(args.keep, rows, out)
    pipe = load_pipeline(None, "cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    learned = []  # every slider learned and checked before any file is written or removed
    for per_run, shipped in rows:
        slider = per_run[0][0]
        pos, neg = slider["pair"]
        if not shipped:
            continue
        P = pair_prompts(slider["kind"], pos, neg)
        v = pipe.learn_direction(P["positive"], P["negative"], two_sided=True, num_inference_steps=20, guidance_scale=5.0,
                                 progress=False, name=f"{pos} <-> {neg}")
        for r, c in runs:
            check_learned(v, r, c, pos, neg)
        v.metadata["benchmark"] = {
            "bench": "bench/two_sided.py (docs/steering.md, 'Sliders between two attributes')", "split": slider["split"],
            **ends(*per_run[0]),
            **({"replications": [{"images_per_side": _images(r), "seeds": r["meta"]["seeds"], **ends(*run)}
                                 for (r, _), run in zip(runs[1:], per_run[1:], strict=True)]} if len(per_run) > 1 else {}),
        }
        learned.append((slider_name(pos, neg), v))
    for name, v in learned:
        print("wrote", v.save(out / f"{name}.safetensors"), flush=True)
    for per_run, shipped in rows:
        pos, neg = per_run[0][0]["pair"]
        stale = out / f"{slider_name(pos, neg)}.safetensors"
        if shipped == "kept":
            print("kept", stale.name, "though it falls short here", flush=True)
        elif not shipped and stale.is_file() and not stale.is_symlink():  # shipped by an earlier run this one does not repeat
            stale.unlink()
            print("removed", stale, flush=True)
    args.runs = runs
    write_table(out, rows, args)


def pair_key(pos: str, neg: str) -> str:
    """A pair's name for ``--keep``: ``red_blue`` (its file's name without ``_slider``)."""
    return slider_name(pos, neg).removesuffix("_slider")


def check_keep(keep: list[str], rows: list, out: Path) -> None:
    """Stop, before anything is learned or written, on a ``--keep`` name that is no pair of the run, one that passes
    (it ships anyway: ``--keep`` would say it falls short) or one with no earlier file (``--keep`` keeps a pair
    shipping; it does not add one that never passed)."""
    pairs = {pair_key(*per_run[0][0]["pair"]): (per_run[0][0]["pair"], shipped) for per_run, shipped in rows}
    for name in keep:
        if name not in pairs:
            raise SystemExit(f"--keep {name}: not a pair of this run (pairs: {', '.join(pairs)})")
        (pos, neg), shipped = pairs[name]
        if shipped is True:
            raise SystemExit(f"--keep {name}: it passes every run and ships anyway; leave it out of --keep")
        if not (out / f"{slider_name(pos, neg)}.safetensors").is_file():
            raise SystemExit(f"--keep {name}: no earlier {slider_name(pos, neg)}.safetensors in {out} to keep")


def _slider(results: dict, pos: str, neg: str) -> dict:
    return next(s for s in results["sliders"] if s["method"] == "two-sided" and s["pair"] == [pos, neg])


def _stated(contra: dict, pos: str, neg: str) -> dict:
    return {c["side"]: c for c in contra["cells"] if c["pair"] == [pos, neg] and c["method"] == "slider"}


def _images(results: dict) -> int:
    return len(results["meta"]["seeds"]) * 8


def ends(slider: dict, stated: dict) -> dict:
    """A run's numbers at both ends: the open prompts' and the stated prompts' (the slider's flips)."""
    return {"open_ends": {end: {k: slider[side][k] for k in KEYS} for end, side in (("+1", "positive"), ("-1", "negative"))},
            "stated_ends": {end: {k: stated[side][k] for k in (*KEYS, "pass")} for end, side in (("+1", "positive"), ("-1", "negative"))}}


def check_learned(v, results: dict, contra: dict, pos: str, neg: str) -> None:
    """Stop unless the re-learned slider has the strengths and flips the run recorded (the same learning)."""
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


def command_args(args: argparse.Namespace) -> str:
    parts = [] if args.results == RESULTS else [f"--results {args.results}"]
    parts += [] if args.contra == CONTRA else [f"--contra {args.contra}"]
    parts += [f"--replication {' '.join(pair)}" for pair in args.replication]
    parts += [f"--keep {' '.join(args.keep)}"] if args.keep else []
    parts += [] if args.out == str(DIRECTIONS_DIR) else [f"--out {args.out}"]
    return "".join(f" {p}" for p in parts)


def run_label(results: dict) -> str:
    seeds, noise = results["meta"]["seeds"], results["meta"].get("noise", "per-seed")
    if noise == "per-image":
        return f"{_images(results)} images (seeds {seeds[0]}-{seeds[0] + _images(results) - 1})"
    return f"{len(seeds)} seeds x 8 prompts ({seeds[0]}-{seeds[-1]})"


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
        f"from 0 toward the end) in {'every run listed' if len(args.runs) > 1 else 'the run listed'}"
        f"{KEPT_NOTE if any(shipped == 'kept' for _, shipped in rows) else ''}. Contradicting columns: `bench/two_sided.py --contra`, the slider at "
        "the end on prompts that state the other end (pass: success >= 0.5, kept >= 0.8, break <= 5 %). Regenerate: "
        f"`python bench/ship_sliders.py{command_args(args)}`. Full results: "
        "docs/steering.md, \"Sliders between two attributes\".",
        "",
        "![every bundled slider from -1 to 1 on an open prompt and on prompts that state each end](sliders.png)",
        "",
        f"*`python scripts/bundled_gallery.py --sliders`, seed 1000, DDIM 20, guidance 5; looked at: {GALLERY_NOTE}*",
        "",
        "| slider | kind | split | shipped | run | open +1 success / kept | open -1 success / kept | stated, slid to +1: success / kept | stated, slid to -1: success / kept |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(m: dict) -> str:
        return f"{m['success']:.2f} / {m['kept']:.2f}" + (" (pass)" if m.get("pass") else "")

    for per_run, shipped in rows:
        first = per_run[0][0]
        pos, neg = first["pair"]
        for i, ((slider, stated), (results, _)) in enumerate(zip(per_run, args.runs, strict=True)):
            status = "kept, though it falls short here" if shipped == "kept" else "yes" if shipped else "no"
            head = (f"| {slider_name(pos, neg) if shipped else f'{pos} / {neg}'} | {first['kind']} | {first['split']} | "
                    f"{status}" if i == 0 else "| | | |")
            lines.append(f"{head} | {run_label(results)} | {cell(slider['positive'])} | {cell(slider['negative'])} | "
                         f"{cell(stated['positive'])} | {cell(stated['negative'])} |")
    (out / "sliders.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
