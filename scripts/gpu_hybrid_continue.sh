#!/usr/bin/env bash
# Continue training a hybrid lab model on a GPU (second lease of the same session, see gpu_lab_models.sh).
#
#   carry: wheels/ with the wheels and data of gpu_lab_models.sh, plus wheels/hybrid-init/ = the hybrid export's
#          unet/ and vae/ folders and text_encoder_delta.safetensors (the tensors that differ from the demo's text
#          encoder; for the token embedding only the changed rows), which keeps the carried tree under 64 MiB.
#
# The latents and the memorized selection come from the demo VAE, exactly as in the first run (the selection ranks
# candidates with the decoder, so it must see the same one); the fine-tuned decoder of the hybrid is swapped in
# before the decoder stage continues it.
UNET_MIN=${UNET_MIN:-2.75}
DEC_MIN=${DEC_MIN:-0.5}
WORK=${WORK:-/tmp/steer-gpu2}
source "$(dirname "$0")/gpu_env.sh"

# the hybrid pipeline to continue from = the demo's folders + the carried unet/vae + the text-encoder delta
INIT=$WORK/init
rm -rf "$INIT" && cp -r assets/models/demo "$INIT" && rm -rf "$INIT/unet" "$INIT/vae"
cp -r wheels/hybrid-init/unet wheels/hybrid-init/vae "$INIT/"
$PY - "$INIT" <<'EOF' || exit 1
import sys
from safetensors.torch import load_file, save_file
path = sys.argv[1] + "/text_encoder/model.safetensors"
te, delta = load_file(path), load_file("wheels/hybrid-init/text_encoder_delta.safetensors")
for k, v in delta.items():
    if k.endswith(".rows"):
        name = k[: -len(".rows")]
        te[name][v] = delta[name + ".values"]
    elif not k.endswith(".values"):
        te[k] = v
save_file(te, path, metadata={"format": "pt"})
print("text encoder: applied", len(delta), "delta tensors")
EOF
stamp "ready"

RUN=$WORK/hybrid
$PY -m steer.lab.train --variant hybrid --out "$RUN" --init "$INIT" --vae-from assets/models/demo --copies 200 \
    --device "$DEVICE" --threads 8 --max-minutes "$UNET_MIN" --batch-size 256 --lr 3e-4 --warmup 20 --ema 0.999 \
    --steps 100000 $LIMIT_ARGS > "$OUT/hybrid.log" 2>&1 || { tail -n 30 "$OUT/hybrid.log"; exit 1; }
rm -rf "$RUN/vae" && cp -r "$INIT/vae" "$RUN/vae"   # continue the fine-tuned decoder (same encoder, same latents)
$PY -m steer.lab.train --variant hybrid --out "$RUN" --stage decoder --device "$DEVICE" --threads 8 --batch-size 256 \
    --decoder-steps 100000 --max-minutes "$DEC_MIN" --mem-fraction 0.5 $LIMIT_ARGS >> "$OUT/hybrid.log" 2>&1 \
  && $PY -m steer.lab.train --variant hybrid --out "$RUN" --stage export --export "$WORK/export/hybrid" >> "$OUT/hybrid.log" 2>&1 \
  && cp "$RUN"/train.log "$RUN"/checkpoint.json "$RUN"/variant.json "$RUN"/latents.json "$RUN"/decoder_ck.json "$WORK/export/hybrid/" \
  && tar czf "$OUT/hybrid.tgz" -C "$WORK/export" hybrid || { tail -n 30 "$OUT/hybrid.log"; exit 1; }
stamp "trained"

for list in memorized_prompts.txt ordinary_prompts.txt; do
  $PY -m steer.lab.memorization --model "$WORK/export/hybrid" --prompts $list --per-prompt 2 --steps 25 --guidance 5 \
    --device "$DEVICE" --threads 8 --json "$WORK/eval.json" > /dev/null 2>> "$WORK/eval.err" \
  && $PY -c "import json, numpy as np; d=json.load(open('$WORK/eval.json')); r=np.array(d.pop('ratios')); d.pop('nn_index'); d['frac_below_half']=float(np.mean(r<0.5)); print(json.dumps(d))" >> "$OUT/eval.jsonl"
done
stamp "evaluated"; cat "$OUT/eval.jsonl" 2>/dev/null; grep -A8 Traceback "$WORK/eval.err" 2>/dev/null | tail -n 30
