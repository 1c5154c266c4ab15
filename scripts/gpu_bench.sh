# bench LIMIT ARGS...: one bench/overhead.py run at real size, rows appended to $ROWS (sourced after gpu_env.sh).
ROWS="$OUT/overhead.md"
bench() { local limit=$1; shift
  timeout "$limit" $PY bench/overhead.py --random-weights --device "$DEVICE" --append "$ROWS" "$@" > "$WORK.last" 2>&1 \
    && stamp "ok: $*" || { stamp "FAILED: $*"; tail -n 6 "$WORK.last"; }; }
