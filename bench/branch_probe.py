"""Screen: calibrated directions learned and applied on another CFG branch. Run from the repository root.

    python bench/branch_probe.py --branch cond [steering_matrix.py arguments ...]

Runs `bench/steering_matrix.py` unchanged, except that ``learn_direction`` calibrates and records its directions
with ``steering_branch`` set to ``--branch`` instead of the default ``"split"`` (``+v`` on the conditional half,
``-v`` on the unconditional one): ``"cond"`` steers the conditional half only, so classifier-free guidance does not
also push away from the direction's opposite. A bench-only patch of the recorded settings (`steer.learn
.CALIBRATED_SETTINGS`), not a library option.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import steering_matrix  # noqa: E402

import steer.learn  # noqa: E402

BRANCHES = ("split", "cond", "uncond", "both")


def main() -> None:
    args = sys.argv[1:]
    if "--branch" not in args or args.index("--branch") + 1 >= len(args):
        raise SystemExit("usage: python bench/branch_probe.py --branch cond [steering_matrix.py arguments ...]")
    i = args.index("--branch")
    branch = args[i + 1]
    if branch not in BRANCHES:
        raise SystemExit(f"--branch must be one of {', '.join(BRANCHES)}, got {branch!r}")
    steer.learn.CALIBRATED_SETTINGS["branch"] = branch
    sys.argv = [sys.argv[0], *args[:i], *args[i + 2:]]
    print(f"branch_probe: calibrated directions learned and applied with steering_branch={branch!r}", flush=True)
    steering_matrix.main()


if __name__ == "__main__":
    main()
