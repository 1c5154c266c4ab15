#!/usr/bin/env bash
# Train the hybrid and mem lab models on a GPU (in parallel, time-budgeted), evaluate their memorization, and
# measure the steering overhead at SD1.5 size.  Written for the project's lent GPU machine (see DEVELOPERS notes):
#
#   carry: wheels/  (diffusers + importlib_metadata wheels, wheels/data/ = Fashion-MNIST train images (xz) + labels)
#   run:   bash scripts/gpu_lab_models.sh            (results under $OUT, at most 8 files)
#
# Environment knobs: UNET_MIN (UNet minutes per model, default 4), DEC_MIN (decoder minutes, default 0.6),
# DEVICE (default cuda), SKIP_BENCH=1, LIMIT (smoke test on the first N training items).
UNET_MIN=${UNET_MIN:-4}
DEC_MIN=${DEC_MIN:-0.6}
WORK=${WORK:-/tmp/steer-gpu}
source "$(dirname "$0")/gpu_env.sh"
stamp "ready"

train_model() {  # name, extra args...
  local name=$1; shift
  local run=$WORK/$name
  $PY -m steer.lab.train --out "$run" --device "$DEVICE" --threads 4 --max-minutes "$UNET_MIN" $LIMIT_ARGS "$@" \
    && $PY -m steer.lab.train --variant "$VARIANT" --out "$run" --stage decoder --device "$DEVICE" --threads 4 \
         --batch-size 256 --decoder-steps 100000 --max-minutes "$DEC_MIN" --mem-fraction "$MEMFRAC" $LIMIT_ARGS \
    && $PY -m steer.lab.train --variant "$VARIANT" --out "$run" --stage export --export "$WORK/export/$name" \
    && cp "$run"/train.log "$run"/checkpoint.json "$run"/variant.json "$run"/latents.json "$run"/decoder_ck.json "$WORK/export/$name/" \
    && tar czf "$OUT/$name.tgz" -C "$WORK/export" "$name"
}

# hybrid: the demo model fine-tuned on the full data + 50 items x 200 copies under unique captions
( VARIANT=hybrid MEMFRAC=0.5 train_model hybrid --variant hybrid --init assets/models/demo --copies 200 \
    --batch-size 256 --lr 5e-4 --warmup 100 --ema 0.999 --steps 100000 > "$OUT/hybrid.log" 2>&1 ) &
hybrid_pid=$!
# mem: from scratch (only the demo VAE is reused) on 32 images
( VARIANT=mem MEMFRAC=1.0 train_model mem --variant mem --vae-from assets/models/demo \
    --batch-size 256 --lr 1e-3 --warmup 100 --ema 0.999 --steps 100000 > "$OUT/mem.log" 2>&1 ) &
mem_pid=$!
wait $hybrid_pid $mem_pid  # (a bare `wait` would also wait for the tee above)
stamp "trained: $(ls "$OUT")"

evaluate() {  # model, prompts, against, per-prompt
  $PY -m steer.lab.memorization --model "$1" --prompts "$2" --against "$3" --per-prompt "$4" --steps 25 \
    --guidance 5 --device "$DEVICE" --threads 8 --json "$WORK/eval.json" > /dev/null 2>> "$WORK/eval.err" \
    && $PY -c "import json,sys; d=json.load(open('$WORK/eval.json')); r=d.pop('ratios'); d.pop('nn_index'); import numpy as np; d['frac_below_half']=float(np.mean(np.array(r)<0.5)); print(json.dumps(d))" >> "$OUT/eval.jsonl"
}
[ -d "$WORK/export/hybrid" ] && evaluate "$WORK/export/hybrid" memorized_prompts.txt train 2 && evaluate "$WORK/export/hybrid" ordinary_prompts.txt train 1
[ -d "$WORK/export/mem" ] && evaluate "$WORK/export/mem" memorized_prompts.txt memorized 2
stamp "evaluated"; cat "$OUT/eval.jsonl" 2>/dev/null; grep -A8 Traceback "$WORK/eval.err" 2>/dev/null | tail -n 30

if [ -z "${SKIP_BENCH:-}" ]; then
  timeout 150 $PY bench/overhead.py --sd15-random --device "$DEVICE" --dtype fp16 --batch 8 --steps 50 --pairs 5 > "$OUT/overhead.md" 2>&1
  stamp "bench done"; cat "$OUT/overhead.md"
fi
stamp "end"
