#!/usr/bin/env bash
# The take-away (add one text direction, remove another: steering_negative="remove") and two directions on different
# CFG branches (a slider on split beside a one-sided direction on cond) at SD1.5 and SDXL size, eager, then the
# take-away compiled (inductor; plain and steered runs both compiled); as scripts/gpu_overhead.sh.
#
#   carry: wheels/  (diffusers + importlib_metadata + zipp wheels)
#   run:   bash scripts/gpu_overhead_take_away.sh   (rows appended to $OUT/overhead.md, log in $OUT/main.log)
#
# The calls run under torch.no_grad() (bench/overhead.py's default since 2026-12-04, as the pipeline itself runs), where
# the steered text tokens are reused across a run's denoiser calls; --inference-mode measures them steered at every call.
# Each run has its own time limit, most important first; the compiled run is last: on 2026-12-04 inductor's compile of
# the SD1.5-sized UNet (plain and steered) did not finish within its 220 s (results: docs/benchmarks.md).
WORK=${WORK:-/tmp/steer-gpu}
source "$(dirname "$0")/gpu_env.sh"
source "$(dirname "$0")/gpu_bench.sh"
stamp "ready"
bench 90 --family sd --dtype fp16 --batch 8 --steps 50 --pairs 7 --site text --take-away
bench 90 --family sd --dtype fp16 --batch 8 --steps 50 --pairs 7 --site text --take-away --inference-mode  # steered at every call
bench 90 --family sd --dtype fp16 --batch 8 --steps 50 --pairs 7 --site text --mixed-branches
bench 90 --family sd --dtype fp16 --batch 8 --steps 50 --pairs 7 --site text --take-away --readers layout
bench 90 --family sdxl --dtype fp16 --batch 4 --steps 20 --pairs 6 --site text --take-away
bench 220 --family sd --dtype fp16 --batch 8 --steps 50 --pairs 5 --site text --take-away --compile
cat "$ROWS"
stamp "end"
