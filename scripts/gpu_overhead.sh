#!/usr/bin/env bash
# Steering overhead at real size on a lent GPU: every family's denoiser built from its published config (random weights,
# same FLOPs), plain vs steered calls alternating (bench/overhead.py), the default text site first.
#
#   carry: wheels/  (diffusers + importlib_metadata wheels)
#   run:   bash scripts/gpu_overhead.sh        (rows appended to $OUT/overhead.md, log in $OUT/main.log)
#
# Each run has its own time limit, most important first, so a slow family cannot cost the others.
WORK=${WORK:-/tmp/steer-gpu}
source "$(dirname "$0")/gpu_env.sh"
stamp "ready"
ROWS="$OUT/overhead.md"

bench() {  # limit (s), overhead.py args...
  local limit=$1; shift
  if timeout "$limit" $PY bench/overhead.py --random-weights --device "$DEVICE" --append "$ROWS" "$@" > "$WORK.last" 2>&1; then
    stamp "ok: $*"
  else
    stamp "FAILED ($?): $*"; tail -n 6 "$WORK.last"; return 1
  fi
}

bench 90 --family sd --dtype fp16 --batch 8 --steps 50 --pairs 5 --site text
bench 90 --family sd --dtype fp16 --batch 8 --steps 50 --pairs 5 --site text --readers layout
bench 150 --family sdxl --dtype fp16 --batch 4 --steps 20 --pairs 4 --site text \
  || bench 150 --family sdxl --dtype bf16 --batch 4 --steps 20 --pairs 4 --site text
bench 120 --family flux --dtype bf16 --batch 1 --steps 20 --pairs 4 --site text
bench 90 --family sd3 --dtype bf16 --batch 2 --steps 20 --pairs 4 --site text
bench 90 --family pixart --dtype bf16 --batch 4 --steps 20 --pairs 4 --site text
bench 90 --family sd --dtype fp16 --batch 8 --steps 50 --pairs 5 --site paper
cat "$ROWS"
stamp "end"
