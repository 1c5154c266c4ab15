#!/usr/bin/env bash
# Rerun of the routed text site (--readers layout) at SD1.5 size after its tokens were computed once per UNet call
# (was once per cross-attention), beside the unrouted text site and SDXL with more pairs; as scripts/gpu_overhead.sh.
WORK=${WORK:-/tmp/steer-gpu}
source "$(dirname "$0")/gpu_env.sh"
source "$(dirname "$0")/gpu_bench.sh"
bench 80 --family sd --dtype fp16 --batch 8 --steps 50 --pairs 5 --site text --readers layout
bench 80 --family sd --dtype fp16 --batch 8 --steps 50 --pairs 5 --site text
bench 100 --family sdxl --dtype fp16 --batch 4 --steps 20 --pairs 6 --site text
cat "$ROWS"
