#!/usr/bin/env bash
# InterBERT-DS: set-up and the everyday commands.
#   ./run.sh           set up, then the main job (see README)
#   ./run.sh test      set up, then the test suite (extra arguments go to pytest)
#   ./run.sh setup     only create / update the environment
set -euo pipefail
cd "$(dirname "$0")"

VENV=${INTERBERT_VENV:-.venv}
# The CPU build of PyTorch lies on this kind of machine's disk; an unpinned torch pulls a CUDA build.
TORCH_SPEC=${INTERBERT_TORCH_SPEC:-torch==2.13.0}
PY="$VENV/bin/python"

setup() {
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

main_job() {
    interbert info --preset tiny
}

cmd=${1:-main}
case "$cmd" in
    setup) setup ;;
    test)
        shift
        setup
        exec "$PY" -m pytest "$@"
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
