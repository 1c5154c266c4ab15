#!/usr/bin/env bash
# The take-away (add one text direction, remove another: steering_negative="remove") at SD1.5 and SDXL size, eager and
# compiled (inductor; plain and steered runs both compiled), beside the additive text site; as scripts/gpu_overhead.sh.
# Not yet run on a GPU (prepared 2026-12-01; on the CPU it runs with DEVICE=cpu on the tiny pipelines only).
WORK=${WORK:-/tmp/steer-gpu}
source "$(dirname "$0")/gpu_env.sh"
source "$(dirname "$0")/gpu_bench.sh"
bench 80 --family sd --dtype fp16 --batch 8 --steps 50 --pairs 5 --site text
bench 80 --family sd --dtype fp16 --batch 8 --steps 50 --pairs 5 --site text --take-away
bench 80 --family sd --dtype fp16 --batch 8 --steps 50 --pairs 5 --site text --take-away --readers layout
bench 240 --family sd --dtype fp16 --batch 8 --steps 50 --pairs 5 --site text --take-away --compile
bench 100 --family sdxl --dtype fp16 --batch 4 --steps 20 --pairs 6 --site text --take-away
cat "$ROWS"
