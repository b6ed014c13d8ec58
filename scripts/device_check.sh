#!/usr/bin/env bash
# The accelerator check (issue 15): on ONE H100/H200 or a TPU host, within --budget-s (default 480 s):
#
#   1. environment: the packages jaxmia and its tests need, installed with pip where an index is
#      reachable (jax's CUDA or TPU plugin too); what stays missing is printed;
#   2. the parity tests on the device (JAX_PLATFORMS = the accelerator; tests/conftest.py keeps
#      float32 matmuls at "highest");
#   3. the feature benchmark (scripts/bench_device.py) at the CIFAR-10 DDPM shape and at the DiT-XL/2
#      shape, float32 (TF32 on NVIDIA) and bfloat16, and the CIFAR shape against PyTorch on the
#      same GPU (scripts/bench_features.py);
#   4. OUT/benchmark_rows.md: rows for docs/benchmarks.md with the device name; OUT/summary.txt:
#      each step's status and seconds; OUT/logs/: every step's output.
#
#   bash scripts/device_check.sh --out OUT
#   bash scripts/device_check.sh --out OUT --dry-run   # this CPU: tiny shapes, one step each (< 1 min)
#
# Each step runs under `timeout` with what is left of the budget (a step that runs out is recorded
# as such and the next one starts); the order puts the figures the issue asks for first.
set -u -o pipefail

OUT=""
DRY=0
BUDGET=480
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --out=*) OUT="${1#--out=}"; shift ;;
    --dry-run) DRY=1; shift ;;
    --budget-s) BUDGET="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "device_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$OUT" ]; then echo "device_check.sh: --out DIR is required" >&2; exit 2; fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
mkdir -p "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
ROWS="$OUT/benchmark_rows.md"
: > "$SUMMARY"
FAILED=0

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME CAP_S CMD...: runs CMD with min(CAP_S, budget left) seconds, logs to OUT/logs/NAME.log
step() {
  local name="$1" cap="$2"; shift 2
  local remaining; remaining=$(left)
  local limit=$(( cap < remaining ? cap : remaining ))
  if [ "$limit" -lt 10 ]; then note "SKIP  $name (budget spent)"; return 0; fi
  local t0; t0=$(date +%s)
  echo "--- $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  tail -n 4 "$OUT/logs/$name.log" | sed 's/^/      /'
  if [ $rc -eq 0 ]; then note "OK    $name (${dt}s)";
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then note "TIME  $name (stopped at ${limit}s)"; FAILED=1;
  else note "FAIL  $name (rc $rc, ${dt}s; $OUT/logs/$name.log)"; FAILED=1; fi
  return 0
}

# ---- 1. environment --------------------------------------------------------------------------
note "device_check: $(date -u +%Y-%m-%dT%H:%M:%SZ), dry-run=$DRY, budget ${BUDGET}s, out $OUT"
PLATFORM=cpu
if [ $DRY -eq 0 ]; then
  if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1; then PLATFORM=cuda;
  elif ls /dev/accel* > /dev/null 2>&1 || [ -n "${TPU_NAME:-}" ]; then PLATFORM=tpu;
  else note "no NVIDIA GPU (nvidia-smi) or TPU (/dev/accel*) found: running on the CPU"; fi
fi
missing() {  # the Python modules of the list that do not import
  "$PY" - "$@" <<'EOF'
import importlib, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}
CORE="jax flax optax numpy scipy click pytest safetensors"
ORACLES="torch diffusers"
MISSING="$(missing $CORE $ORACLES)"
HAS_BACKEND=1
if [ "$PLATFORM" != cpu ]; then
  "$PY" -c "import jax, sys; sys.exit(0 if jax.default_backend() in ('gpu', 'tpu') else 1)" > /dev/null 2>&1 || HAS_BACKEND=0
fi
PIP_PLAN=()
[ -n "$(missing $CORE)" ] && PIP_PLAN+=("-e" ".[test]")
if [ $HAS_BACKEND -eq 0 ]; then
  JAXV="$("$PY" -c 'import jax; print(jax.__version__)' 2>/dev/null || echo)"
  if [ "$PLATFORM" = cuda ]; then PIP_PLAN+=("jax[cuda12]${JAXV:+==$JAXV}"); else PIP_PLAN+=("jax[tpu]${JAXV:+==$JAXV}"); fi
fi
for m in $ORACLES; do case " $MISSING " in *" $m "*) PIP_PLAN+=("$m") ;; esac; done
if [ ${#PIP_PLAN[@]} -gt 0 ]; then
  if [ $DRY -eq 1 ]; then note "would pip install: ${PIP_PLAN[*]}";
  else
    note "pip install: ${PIP_PLAN[*]}"
    timeout 150 "$PY" -m pip install --quiet --disable-pip-version-check "${PIP_PLAN[@]}" > "$OUT/logs/pip.log" 2>&1 \
      || note "pip install failed (no package index?): $OUT/logs/pip.log"
  fi
fi
STILL="$(missing $CORE $ORACLES)"
[ -n "$STILL" ] && note "missing Python packages: $STILL (PyTorch rows and parity tests need torch + diffusers)"
if [ -n "$(missing jax numpy click)" ]; then note "cannot run without jax, numpy, click"; exit 1; fi

if [ "$PLATFORM" = cpu ]; then export JAX_PLATFORMS=cpu; else export JAX_PLATFORMS="$PLATFORM"; fi
DEVICE="$("$PY" -c 'import jax; d = jax.devices()[0]; print(d.platform + ": " + str(getattr(d, "device_kind", d)) + " x" + str(jax.device_count()))' 2>&1 | tail -n 1)"
note "device: $DEVICE; jax $("$PY" -c 'import jax; print(jax.__version__)' 2>/dev/null)"
KIND="$(echo "$DEVICE" | tr '[:upper:]' '[:lower:]')"
# dense peaks (TFLOP/s): TF32 / BF16. NVIDIA H100/H200 SXM: 494.7 / 989.4; TPU: BF16 only (v4 275,
# v5e 197, v5p 459, v6e 918), float32 matmuls there run as bf16 passes, so no float32 peak is given.
PEAK_F32=""; PEAK_BF16=""
case "$KIND" in
  *h100*|*h200*|*gh200*) PEAK_F32=494.7; PEAK_BF16=989.4 ;;
  *"tpu v4"*) PEAK_BF16=275 ;; *"v5 lite"*|*v5e*) PEAK_BF16=197 ;; *v5p*) PEAK_BF16=459 ;; *v6*) PEAK_BF16=918 ;;
esac
export JAXMIA_COMPILE_CACHE="${JAXMIA_COMPILE_CACHE:-$OUT/xla_cache}"  # a rerun loads its programs

# ---- 2. parity tests on the device ---------------------------------------------------------------
PARITY="tests/test_unet2d_parity.py tests/test_dit_parity.py tests/test_unet2d_condition_parity.py tests/test_vae_parity.py tests/test_features_lanes.py"
if [ $DRY -eq 1 ]; then
  step parity_collect 60 "$PY" -m pytest --collect-only -q -p no:cacheprovider $PARITY
else
  step parity 150 "$PY" -m pytest -q -x -p no:cacheprovider -m "not slow" $PARITY
fi

# ---- 3. benchmarks -------------------------------------------------------------------------------
bench() {  # bench NAME CAP ARGS...: scripts/bench_device.py, its Markdown row into OUT/benchmark_rows.md
  local name="$1" cap="$2"; shift 2
  step "$name" "$cap" "$PY" scripts/bench_device.py --rows-out "$ROWS" "$@"
}
if [ $DRY -eq 1 ]; then
  export JAX_DISABLE_MOST_OPTIMIZATIONS=true  # tiny programs, compiled fast: the pieces, not the speed
  bench tiny_unet_f32 60 --model tiny-unet --dtype float32 --batch 2 --reps 1 --stream 2 --features loss,noise_opt
  bench tiny_dit_bf16 60 --model tiny-dit --dtype bfloat16 --batch 2 --reps 1 --rows unet_forward
  step torch_cifar_shape 60 "$PY" scripts/bench_features.py --target demo --batch 2 --reps 1 \
    --rows unet_forward --no-check --torch-threads 1 --cpu-devices 1
else
  P32=${PEAK_F32:+--peak-tflops $PEAK_F32}
  P16=${PEAK_BF16:+--peak-tflops $PEAK_BF16}
  bench cifar_f32 120 --model cifar --dtype float32 --batch 256 --reps 2 $P32
  bench dit_xl_bf16 120 --model dit-xl-2-256 --dtype bfloat16 --batch 64 --reps 2 $P16
  bench cifar_bf16 90 --model cifar --dtype bfloat16 --batch 256 --reps 2 $P16
  bench dit_xl_f32 90 --model dit-xl-2-256 --dtype float32 --batch 64 --reps 2 $P32
  TORCH_DEV=cpu; [ "$PLATFORM" = cuda ] && TORCH_DEV=cuda
  step torch_cifar_shape 150 "$PY" scripts/bench_features.py --target cifar --batch 128 --reps 2 \
    --rows unet_forward,unet_vjp,cdi --torch-device "$TORCH_DEV" --cpu-devices 1 $P32
  grep -E "^(unet_forward|unet_vjp|cdi) " "$OUT/logs/torch_cifar_shape.log" > "$OUT/torch_rows.txt" 2>/dev/null
fi

# ---- 4. the rows --------------------------------------------------------------------------------
{
  echo ""
  echo "Device check $(date -u +%Y-%m-%d): $DEVICE; $(grep -c '^OK' "$SUMMARY") step(s) OK (summary.txt)."
} >> "$ROWS"
if [ $DRY -eq 1 ]; then
  "$PY" - "$ROWS" <<'EOF' || { note "FAIL  rows: $ROWS does not hold the expected rows"; FAILED=1; }
import sys
rows = [l for l in open(sys.argv[1]) if l.startswith("| cpu")]
assert len(rows) == 2, rows
assert all(len(r.strip().strip("|").split("|")) == 11 for r in rows), rows
EOF
fi
note "rows: $ROWS ($(( $(date +%s) - START ))s in all)"
exit $FAILED
