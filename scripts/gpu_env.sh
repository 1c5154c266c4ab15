# Shared set-up of the GPU job scripts (sourced; expects UNET_MIN / DEC_MIN / WORK defaults set by the caller):
# output folder and log, knobs, the carried wheels installed into /tmp/site (CUDA only), and the carried Fashion-MNIST
# (wheels/data, xz) unpacked where steer.lab.data finds it.
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
LIMIT_ARGS=${LIMIT:+--limit $LIMIT}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/main.log") 2>&1
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

if [ "$DEVICE" = cuda ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site wheels/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
else
  export PYTHONPATH=$PWD
fi
if [ -f wheels/data/train-images-idx3-ubyte.xz ]; then
  mkdir -p "$WORK/fm"
  xz -dc wheels/data/train-images-idx3-ubyte.xz | gzip -1 > "$WORK/fm/train-images-idx3-ubyte.gz"
  cp wheels/data/train-labels-idx1-ubyte.gz "$WORK/fm/"
  export STEER_FASHION_MNIST=$WORK/fm
fi
