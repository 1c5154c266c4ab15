"""Screen: calibrated directions learned and applied on another CFG branch. Run from the repository root.

    python bench/branch_probe.py --branch cond bench/steering_matrix.py [its arguments ...]
    python bench/branch_probe.py --branch cond bench/take_away_fit.py --kind colour
    python bench/branch_probe.py --branch cond bench/two_sided.py --noise per-image --seeds 4 --seed-base 3000

Runs a bench script unchanged, except that ``learn_direction`` calibrates and records every calibrated text
direction, two-sided sliders' sides included, with ``steering_branch`` set to ``--branch``: ``"cond"`` steers the
conditional half only (the one-sided default since 2026-12-04), ``"split"`` adds ``+v`` on it and ``-v`` on the
unconditional half (the default before, and the sliders' still). Session 36 screened ``--branch cond`` with it
(docs/steering.md, "The conditional branch only"). A bench-only patch of `steer.learn.CALIBRATED_SETTINGS` and
`steer.learn.SLIDER_BRANCH`; ``learn_direction(branch=...)`` is the library's option.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import steer.learn  # noqa: E402
from steer.config import BRANCHES  # noqa: E402


def main() -> None:
    args = sys.argv[1:]
    if len(args) < 3 or args[0] != "--branch" or not args[2].endswith(".py"):
        raise SystemExit("usage: python bench/branch_probe.py --branch cond bench/<script>.py [its arguments ...]")
    branch, script, rest = args[1], args[2], args[3:]
    if branch not in BRANCHES:
        raise SystemExit(f"--branch must be one of {', '.join(BRANCHES)}, got {branch!r}")
    steer.learn.CALIBRATED_SETTINGS["branch"] = branch
    steer.learn.SLIDER_BRANCH = branch  # read when a two-sided learning starts
    print(f"branch_probe: calibrated directions learned and applied with steering_branch={branch!r}", flush=True)
    sys.argv = [script, *rest]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
