#!/usr/bin/env bash
# The project's one prepared GPU check: at most 8 minutes on one GPU, every figure printed and kept.
#
#   bash benchmarks/gpu_check.sh            # on a machine with an NVIDIA GPU; figures in runs/gpu_check/
#
# Steps, each under its own timeout (cut to what is left of BUDGET seconds for all of them): a step
# that fails or runs out of time is recorded and the check goes on with the next one.
#   gpu             nvidia-smi: name, memory, driver, compute capability
#   device          torch's device name and capability, the precisions to time, the peak of each
#                   (interbert/training/peaks.py: the SKU table, or a measured matmul) and its source
#   ops             DeepSpeed's FusedAdam built once (JIT), before anything is timed; when it cannot
#                   be, the training steps run the same config with torch's fused AdamW (torch_adam,
#                   fused), and the JSON says so (the ops step's status, each row's optimizer)
#   synth           a synthetic 36-region corpus ($IMAGES images) for the data path
#   throughput_P    paper-base pretraining in the DeepSpeed engine in precision P over a micro-batch
#                   sweep, real batches through the data path (4 loader workers): samples/s, MFU
#                   against the peak, peak memory, the data path's share; and the 8xV100 plan from
#                   those figures (benchmarks/v100_plan.py, printed by throughput.py)
#   retrieval_P     the retrieval evaluation's pairs/s on the device under autocast P, RETRIEVAL_IMAGES
#                   test images x 5 captions each (benchmarks/retrieval_eval.py)
# Precisions: fp16 on every GPU (the paper's V100 setting), bf16 as well at compute capability >= 8.0;
# on a CPU, training in bf16 and retrieval in fp32. At the end every step's status (ok, failed,
# timeout, skipped), exit code, seconds and figures go into one JSON, $OUT/gpu_check.json.
# Exit status: 0 when at least one throughput or retrieval step ended ok, 1 when none did,
# 2 when no GPU is visible (and GPU_CHECK_ALLOW_CPU is not 1).
# Environment: OUT (default runs/gpu_check), PRESET (paper-base), MICRO (16,32,64,128), STEPS (6),
# IMAGES (1000), RETRIEVAL_IMAGES (100), BUDGET (420 s for all steps); GPU_CHECK_ALLOW_CPU=1 runs the
# same commands on a CPU (the tests do, at toy sizes); for the tests, GPU_CHECK_FAIL=step,step makes
# those steps fail and GPU_CHECK_TIMEOUTS=step=seconds,... sets those steps' timeouts.
set -uo pipefail  # no -e: one step's failure must not end the check
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-runs/gpu_check}
PRESET=${PRESET:-paper-base}
MICRO=${MICRO:-16,32,64,128}
STEPS=${STEPS:-6}
IMAGES=${IMAGES:-1000}
RETRIEVAL_IMAGES=${RETRIEVAL_IMAGES:-100}
BUDGET=${BUDGET:-420}
started=$(date +%s)
mkdir -p "$OUT"
STATUS_FILE="$OUT/steps.tsv"
: > "$STATUS_FILE"

if [ "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]; then
    if ! timeout 60 "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check: no CUDA device visible to PyTorch; run it on a GPU machine" >&2
        exit 2
    fi
    ON_GPU=1
else
    ON_GPU=$(timeout 60 "$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
fi

listed() {  # listed NAME "a,b,c": whether NAME is one of the comma-separated names
    [[ ",$2," == *",$1,"* ]]
}

step_timeout() {  # step_timeout NAME DEFAULT: GPU_CHECK_TIMEOUTS's value for NAME, else DEFAULT
    local pair
    local timeouts=${GPU_CHECK_TIMEOUTS:-}
    for pair in ${timeouts//,/ }; do
        [ "${pair%%=*}" = "$1" ] && { echo "${pair#*=}"; return; }
    done
    echo "$2"
}

record() {  # record NAME STATUS EXIT_CODE SECONDS TIMEOUT NOTE
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$STATUS_FILE"
    echo "[gpu_check] $1: $2${6:+ ($6)}"
}

# step NAME TIMEOUT COMMAND...: COMMAND under its timeout (cut to the budget left), its console in
# $OUT/NAME.txt; its status recorded, never ending the check.
step() {
    local name=$1 limit left began rc status note=""
    limit=$(step_timeout "$1" "$2")
    shift 2
    rm -f "$OUT/$name.json" "$OUT/$name.txt"
    left=$(( BUDGET - ($(date +%s) - started) ))
    if (( left < 5 )); then
        record "$name" skipped "" 0 "$limit" "the check's $BUDGET s budget is spent"
        return 1
    fi
    (( limit > left )) && limit=$left
    if listed "$name" "${GPU_CHECK_FAIL:-}"; then
        set -- sh -c 'echo "gpu_check: failure injected by GPU_CHECK_FAIL" >&2; exit 3'
    fi
    echo "[gpu_check] $name (timeout $limit s)"
    began=$(date +%s)
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout; note="stopped after $limit s" ;;
        *) status=failed; note="exit code $rc; last line: $(tail -n 1 "$OUT/$name.txt" | tr '\t' ' ' | cut -c1-200)" ;;
    esac
    record "$name" "$status" "$rc" "$(( $(date +%s) - began ))" "$limit" "$note"
    [ "$status" = ok ]
}

skip() {  # skip NAME REASON
    record "$1" skipped "" 0 0 "$2"
}

if [ "$ON_GPU" = 1 ]; then
    step gpu 20 nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
else
    skip gpu "no GPU: a CPU run (GPU_CHECK_ALLOW_CPU=1)"
fi

step device 60 "$PY" - "$OUT/device.json" <<'EOF'
import json, sys
import torch
from interbert.training.peaks import device_peak

cuda = torch.cuda.is_available()
device = torch.device("cuda" if cuda else "cpu")
capability = torch.cuda.get_device_capability(device) if cuda else None
if cuda:
    train, retrieval = (["fp16", "bf16"],) * 2 if capability[0] >= 8 else (["fp16"],) * 2
else:
    train, retrieval = ["bf16"], ["fp32"]  # DeepSpeed refuses fp16 on a CPU; retrieval exact there
dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
peaks = {p: device_peak(device, dtypes[p]).__dict__ for p in train}
report = {"torch": torch.__version__, "cuda": torch.version.cuda, "device_type": device.type,
          "name": torch.cuda.get_device_name(device) if cuda else "cpu",
          "capability": ".".join(map(str, capability)) if cuda else None,
          "train_precisions": train, "retrieval_precisions": retrieval, "peaks": peaks}
print(json.dumps(report, indent=2))
open(sys.argv[1], "w").write(json.dumps(report, indent=2) + "\n")
EOF

field() {  # field KEY DEFAULT: device.json's list KEY, space-separated, else DEFAULT
    "$PY" -c "import json, sys; print(' '.join(json.load(open(sys.argv[1]))[sys.argv[2]]))" \
        "$OUT/device.json" "$1" 2>/dev/null || echo "$2"
}
if [ "$ON_GPU" = 1 ]; then
    TRAIN=$(field train_precisions fp16)
    RETRIEVAL=$(field retrieval_precisions fp16)
else
    TRAIN=$(field train_precisions bf16)
    RETRIEVAL=$(field retrieval_precisions fp32)
fi
echo "[gpu_check] preset $PRESET; training in: $TRAIN; retrieval in: $RETRIEVAL; micro-batches $MICRO," \
     "$STEPS timed steps each; budget $BUDGET s" | tee "$OUT/settings.txt"

DS_CONFIG=()
if [ "$ON_GPU" = 1 ]; then
    if ! step ops 120 "$PY" -c "from deepspeed.ops.op_builder import FusedAdamBuilder; FusedAdamBuilder().load()"; then
        "$PY" -c "import json, sys; c = json.load(open('ds_configs/pretrain_v100x8.json'))
c['optimizer']['params'].update(torch_adam=True, fused=True); json.dump(c, open(sys.argv[1], 'w'), indent=2)" \
            "$OUT/ds_config_torch_adam.json" &&
            DS_CONFIG=(--ds-config "$OUT/ds_config_torch_adam.json") &&
            echo "[gpu_check] FusedAdam is not available: training with torch.optim.AdamW(fused=True)" \
                 "($OUT/ds_config_torch_adam.json)" |
            tee -a "$OUT/settings.txt"
    fi
else
    skip ops "a CPU run: Adam runs as torch_adam there"
fi

step synth 90 "$PY" -m interbert data synth --out "$OUT/corpus" --images "$IMAGES" --overwrite

throughput() {  # throughput PRECISION
    step "throughput_$1" 150 "$PY" benchmarks/throughput.py --preset "$PRESET" --precision "$1" \
        "${DS_CONFIG[@]}" --micro-batches "$MICRO" --steps "$STEPS" --warmup 2 --baseline none \
        --data "$OUT/corpus/features" --captions "$OUT/corpus/captions.jsonl" --workers 4 \
        --json "$OUT/throughput_$1.json"
}

retrieval() {  # retrieval PRECISION
    step "retrieval_$1" 60 "$PY" benchmarks/retrieval_eval.py --preset "$PRESET" --corpus "$OUT/corpus" \
        --split test --autocast "$1" --images "$RETRIEVAL_IMAGES" --released-images "$RETRIEVAL_IMAGES" \
        --released-captions 4 \
        --json "$OUT/retrieval_$1.json"
}

# fp16 (the V100 setting) first, each precision's retrieval after its training
for precision in $TRAIN; do
    throughput "$precision"
    listed "$precision" "${RETRIEVAL// /,}" && retrieval "$precision"
done
for precision in $RETRIEVAL; do
    listed "$precision" "${TRAIN// /,}" || retrieval "$precision"
done

timeout 30 "$PY" - "$OUT" "$BUDGET" "$(( $(date +%s) - started ))" <<'EOF'
"""Every step's status and figures in one JSON; a short table on the console."""
import json, sys
from pathlib import Path

out, budget, seconds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])


def number(text):
    return int(text) if text.strip().isdigit() else None


def figures(name):
    path = out / f"{name}.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError as error:
        return {"unreadable": f"{path}: {error}"}


def throughput_summary(report):
    rows = [r for r in report.get("results", []) if r.get("system") == "interbert-ds"]
    plan = report.get("v100_plan", {})
    return {"peak_source": report["environment"]["peak_source"], "optimizer": report["environment"].get("optimizer"),
            "rows": [{"micro_batch": r["micro_batch"], "samples_per_s": r["samples_per_s"], "mfu": r["mfu"],
                      "tflops": r["tflops"], "memory_bytes": r["memory_bytes"],
                      "data_share": r["ms_per_step"]["data"] / sum(r["ms_per_step"].values())} for r in rows],
            "v100_plan": {key: plan.get(key) for key in ("micro_batch", "gradient_accumulation",
                                                         "v100_samples_per_s_per_gpu", "wall_clock_days")}}


def retrieval_summary(report):
    return {"device_name": report["device_name"], "precision": report["precision"],
            "pairs_per_second": {w: r["pairs_per_second"] for w, r in report["ours"].items()},
            "released_pairs_per_second": report["released"]["pairs_per_second"]}


steps, summary = [], {}
for line in (out / "steps.tsv").read_text().splitlines():
    name, status, code, took, limit, note = (line.split("\t") + [""] * 6)[:6]
    step = {"name": name, "status": status, "exit_code": number(code), "seconds": number(took),
            "timeout_s": number(limit), "note": note, "console": str(out / f"{name}.txt"), "figures": figures(name)}
    if name == "gpu" and (out / "gpu.txt").is_file():
        step["figures"] = {"nvidia_smi": (out / "gpu.txt").read_text()}
    steps.append(step)
    for kind, summarise in (("throughput", throughput_summary), ("retrieval", retrieval_summary)):
        if name.startswith(kind + "_") and status == "ok" and isinstance(step["figures"], dict):
            try:
                summary.setdefault(kind, {})[name.split("_", 1)[1]] = summarise(step["figures"])
            except (KeyError, TypeError, ZeroDivisionError) as error:
                summary.setdefault(kind, {})[name.split("_", 1)[1]] = {"unreadable": repr(error)}
device = next((s["figures"] for s in steps if s["name"] == "device"), None) or {}
report = {"seconds": seconds, "budget_s": budget, "device": device.get("name"), "peaks": device.get("peaks"),
          "steps": steps, "summary": summary}
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
print(f"\n{'step':18}{'status':>10}{'seconds':>9}  note")
for s in steps:
    print(f"{s['name']:18}{s['status']:>10}{s['seconds']:>9}  {s['note']}")
print(f"figures: {out / 'gpu_check.json'}")
EOF

echo "[gpu_check] done in $(( $(date +%s) - started )) s; figures in $OUT"
if ! grep -qE $'^(throughput|retrieval)_[a-z0-9]+\tok\t' "$STATUS_FILE"; then
    echo "gpu_check: no throughput or retrieval step ended ok (see $STATUS_FILE)" >&2
    exit 1
fi
