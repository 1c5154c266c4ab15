"""The model's own ceiling for each matrix target: rewrite the open prompt with the attribute, same seeds, same judges.

    python bench/prompt_ceiling.py [--seeds 4] [--seed-base 3000 5000 7000] [--noise per-image]
        [--out docs/steering/prompt_ceiling_independent.json]
    python bench/prompt_ceiling.py --condition contra --out docs/steering/prompt_ceiling_contra.json

"a t-shirt" -> "a blue t-shirt", "a red item" -> "a red ankle boot": if the model itself does not render the
attribute from its own prompt (by the matrix's judges), no steering of that model can be expected to. This separates
the model's limits from the method's without a larger model.

The noise seeds are the steering matrix's (`steering_matrix.Runner.seed`): with ``--noise per-image`` (the default
since 2026-12-03) every image starts from its own seed, so a cell of ``--seeds`` x 8 prompts is that many independent
images and the rewrite is judged against the matrix's reference of the same seed base. Several ``--seed-base`` values
are run one after the other and pooled (every set the same size, so the pooled rate is their mean). ``--noise
per-seed --seed-base 1000 --seeds 2 --out docs/steering/prompt_ceiling.json`` reproduces the first run, whose 8 prompts
of a seed shared their noise.

``--condition contra``: the matrix's contradicting prompts instead, each rewritten with the target in place of the
value it states ("a red sneaker" -> "a blue sneaker", "a red dress" -> "a red bag"), judged against the unsteered
contradicting prompts: what the model draws when told the target outright, the ceiling of a take-away.
"""

from __future__ import annotations

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

from steering_matrix import C, K, Runner, cell_metrics, check_seed_bases, judge, prompts_for  # noqa: E402

from steer.cli.loading import load_pipeline  # noqa: E402
from steer.lab.classifier import load_classifier  # noqa: E402


def edited(kind: str, target: str, prompt: str) -> str:
    """The open prompt with the attribute written in ("a t-shirt" -> "a blue t-shirt"; "a red item" -> "a red bag")."""
    return f"a {target} {prompt[2:]}" if kind == "colour" else prompt.replace(" item", f" {target}")


def replaced(kind: str, target: str, prompt: str) -> str:
    """A contradicting prompt with the target in place of the value it states ("a red sneaker" -> "a blue sneaker";
    "a red dress" -> "a red bag")."""
    if kind == "colour":
        return f"a {target} {prompt.split(' ', 2)[2]}"
    stated = next(k for k in sorted(K, key=len, reverse=True) if prompt.endswith(f" {k}"))
    return prompt[: -len(stated)] + target


def ceiling_rows(run: Runner, condition: str = "open") -> list[dict]:
    """One row per target: the rewritten ``condition`` ("open" / "contra") prompts judged against the prompts as
    written, both from ``run``'s seeds."""
    rows = []
    rewrite = edited if condition == "open" else replaced
    for kind, values in (("colour", C), ("class", K)):
        for target in values:
            open_prompts = prompts_for(kind, target)[condition]
            ref = run.sample(open_prompts)
            out = run.sample([rewrite(kind, target, p) for p in open_prompts])
            m = cell_metrics(judge(run.classifier, out), judge(run.classifier, ref), kind, (C if kind == "colour" else K).index(target))
            rows.append({"kind": kind, "target": target, **m})
            print(run.seed_base, kind, target, {k: round(v, 2) for k, v in m.items()}, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=4, help="draws per prompt (a cell is seeds x 8 images)")
    ap.add_argument("--seed-base", type=int, nargs="+", default=[3000, 5000, 7000],
                    help="one run per value, pooled (the steering matrix's independent sets: 3000 5000 7000)")
    ap.add_argument("--noise", choices=("per-image", "per-seed"), default="per-image")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "steering" / "prompt_ceiling_independent.json"))
    ap.add_argument("--model", default=None, help="pipeline folder (default: the embedded demo model)")
    ap.add_argument("--condition", choices=("open", "contra"), default="open",
                    help="the matrix's attribute-open prompts (default) or its contradicting ones, rewritten with the target")
    args = ap.parse_args()
    check_seed_bases(args.seed_base, args.noise, args.seeds)
    torch.set_num_threads(1)
    t0 = time.time()
    pipe, classifier = load_pipeline(args.model, "cpu"), load_classifier()
    pipe.set_progress_bar_config(disable=True)
    runs = {base: ceiling_rows(Runner(pipe, classifier, args.steps, args.guidance, args.seeds, base, args.noise), args.condition) for base in args.seed_base}
    pooled = []
    for i, row in enumerate(runs[args.seed_base[0]]):
        keys = [k for k, v in row.items() if isinstance(v, float)]
        pooled.append({"kind": row["kind"], "target": row["target"], **{k: round(float(np.mean([runs[b][i][k] for b in runs])), 4) for k in keys}})
    Path(args.out).write_text(json.dumps({
        "command": " ".join(["python", *sys.argv]), "model": args.model or "assets/models/demo", "condition": args.condition, "seeds": args.seeds,
        "seed_bases": args.seed_base, "noise": args.noise, "images_per_cell": args.seeds * 8 * len(args.seed_base),
        "steps": args.steps, "guidance": args.guidance, "wall_seconds": round(time.time() - t0, 1),
        "rows": pooled, "runs": {str(b): r for b, r in runs.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
