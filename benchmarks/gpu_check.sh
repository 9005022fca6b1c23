#!/usr/bin/env bash
# The project's one prepared GPU check: at most 8 minutes on one GPU, every figure printed and kept.
#
#   bash benchmarks/gpu_check.sh            # on a machine with an NVIDIA GPU; figures in runs/gpu_check/
#
# It measures paper-base pretraining in the DeepSpeed engine (fp16 with the V100 config on a V100,
# bf16 on Ampere or newer) over a micro-batch sweep, with real batches through the data path (a
# synthetic 36-region corpus, 4 loader workers): samples/s, MFU against the device's peak, peak
# memory, the data path's share of the step; then the retrieval evaluation's pairs/s; and the
# 8xV100 plan computed from those figures (benchmarks/v100_plan.py, printed by throughput.py).
# Environment: OUT (default runs/gpu_check), PRESET (paper-base), MICRO (16,32,64,128), STEPS (6),
# IMAGES (1000); GPU_CHECK_ALLOW_CPU=1 runs the same commands on a CPU (the tests do, at toy sizes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-runs/gpu_check}
PRESET=${PRESET:-paper-base}
MICRO=${MICRO:-16,32,64,128}
STEPS=${STEPS:-6}
IMAGES=${IMAGES:-1000}
mkdir -p "$OUT"
started=$(date +%s)

if [ "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]; then
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check: no CUDA device visible to PyTorch; run it on a GPU machine" >&2
        exit 2
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv | tee "$OUT/gpu.txt"
fi
PRECISION=$("$PY" -c "import torch; print('bf16' if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] >= 8 else 'fp16')")
echo "[gpu_check] preset $PRESET, precision $PRECISION, micro-batches $MICRO, $STEPS timed steps each" | tee "$OUT/settings.txt"

echo "[gpu_check] 1/3 a synthetic corpus for the data path ($IMAGES images, 36 regions)"
timeout 90 "$PY" -m interbert data synth --out "$OUT/corpus" --images "$IMAGES" --overwrite > "$OUT/synth.txt"

echo "[gpu_check] 2/3 pretraining in the engine: samples/s, MFU, peak memory, data share; the 8xV100 plan"
timeout 330 "$PY" benchmarks/throughput.py --preset "$PRESET" --precision "$PRECISION" --micro-batches "$MICRO" \
    --steps "$STEPS" --warmup 2 --baseline none --data "$OUT/corpus/features" \
    --captions "$OUT/corpus/captions.jsonl" --workers 4 --json "$OUT/throughput.json" | tee "$OUT/throughput.txt"

echo "[gpu_check] 3/3 retrieval evaluation: pairs/s (100 images x 500 captions)"
timeout 60 "$PY" benchmarks/retrieval_eval.py --preset "$PRESET" --corpus "$OUT/corpus" --split test \
    --images 100 --released-images 100 --released-captions 4 --json "$OUT/retrieval.json" | tee "$OUT/retrieval.txt"

echo "[gpu_check] done in $(( $(date +%s) - started )) s; figures in $OUT"
