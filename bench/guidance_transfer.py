"""Does a direction calibrated at one guidance scale make its full edit at another?

    python bench/guidance_transfer.py [--out docs/steering/guidance_transfer] [--seeds 2 --seed-base 1000]

Protocol (fixed before the first run, 2026-12-02), the twin of `bench/negative_prompt.py`: every colour target of the
matrix (its tuning / held-out split), learned with the defaults at the matrix's guidance 5 (``default``), and again at
each generation guidance ``g`` in 3, 7.5 and 10 (``calibrated``: what ``learn_direction(guidance_scale=g)`` / ``steer
learn --guidance g`` gives); on the matrix's 8 attribute-open prompts x the seeds at guidance ``g``: ``default`` at 1.0,
``calibrated`` at 1.0 and the model's own prompt edit (``rewrite``). The split-branch push is amplified by ``2g - 1``,
so a strength calibrated at 5 may under-edit at 3 and overshoot at 10. Judges and pass rule: the matrix's. Reported,
not adopted: calibrating at the guidance one generates with is already the documented recipe; this measures what
skipping it costs. ~10 min on the demo model, 1 thread.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from negative_prompt import compared, sampler, save, setup, summarise  # noqa: E402
from steering_matrix import TUNING, prompts_for  # noqa: E402

LEARNED_AT = 5.0
GUIDANCES = (3.0, 7.5, 10.0)


def main() -> None:
    t0 = time.time()
    args, pipe, classifier, seeds = setup(__doc__, "guidance_transfer")
    if args.kind != "colour":
        raise SystemExit("guidance_transfer.py measures the colour targets only")

    sample = sampler(pipe, seeds)

    cells, grid_rows, learned = [], [], []
    for target in args.targets:
        P = prompts_for("colour", target)
        split = "tuning" if target in TUNING["colour"] else "held-out"
        default = pipe.learn_direction(P["positive"], P["negative"], num_inference_steps=20, guidance_scale=LEARNED_AT, progress=False)
        learned.append({"target": target, "guidance": LEARNED_AT, "strength": default.metadata["calibration"]["strength"],
                        "window": default.metadata["recommended"]["window"]})
        for guidance in GUIDANCES:
            calibrated = pipe.learn_direction(P["positive"], P["negative"], num_inference_steps=20, guidance_scale=guidance, progress=False)
            learned.append({"target": target, "guidance": guidance, "strength": calibrated.metadata["calibration"]["strength"],
                            "window": calibrated.metadata["recommended"]["window"]})
            metrics, rows = compared(classifier, lambda prompts, g=guidance, **steering: sample(prompts, "", g, **steering), P, target, default, calibrated)
            # `summarise` groups by the condition key it was written for: the generation guidance here
            cells += [{"target": target, "split": split, "negative_prompt": f"guidance {guidance:g}", "guidance": guidance, "method": m, **r}
                      for m, r in metrics.items()]
            if guidance == GUIDANCES[-1]:  # grid rows at the highest guidance
                grid_rows += rows
        print(f"{target}: {time.time() - t0:.0f} s", flush=True)

    summary = {f"guidance {g:g}": summarise([c for c in cells if c["guidance"] == g]) for g in GUIDANCES}
    results = {"meta": {"seeds": seeds, "learned_at": LEARNED_AT, "guidances": list(GUIDANCES)}, "summary": summary, "learned": learned, "cells": cells}
    save(args, Path(__file__).name, t0, results, grid_rows, f"guidance {GUIDANCES[-1]:g}; per target 4 rows: unsteered, learned at {LEARNED_AT:g} "
         f"at 1.0, learned at {GUIDANCES[-1]:g} at 1.0, the prompt rewrite; targets {', '.join(args.targets)}; seed {seeds[0]}")


if __name__ == "__main__":
    main()
