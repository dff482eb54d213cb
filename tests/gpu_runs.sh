#!/usr/bin/env bash
# The GPU runs that the CPU suite can't make: the harmony smoke on a gpt-oss-20b-shaped model
# (tests/gpu_smoke_harmony.py, docs/engines.md) and the collect run with its speed profile,
# simulate and overhead (tests/gpu_collect_hf.py, docs/own-model.md).
#
#   bash tests/gpu_runs.sh prepare [DIR]   here (PyPI and npm reachable): fill the carry folder
#   bash tests/gpu_runs.sh run [DIR]       on the GPU box (no internet), DIR carried; results
#                                          under $OUT (at most 8 files: the device's limit)
#
# DIR defaults to .gpucarry (git-ignored through .git/info/exclude). The GPU box has torch,
# transformers, numpy and sympy; the rest travels as wheels. Large files travel xz-compressed
# to stay under the 64 MiB a call may carry (about 47 MiB in all).
set -euo pipefail
cd "$(dirname "$0")/.."
C=${2:-.gpucarry}

prepare() {
    mkdir -p "$C/wheels" "$C/harmony"
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$C/wheels" \
        openai-harmony==0.0.8 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
        typing-inspection==0.4.5 polars==2.1.0 polars-runtime-32==2.1.0
    local runtime unpacked
    runtime=$(ls "$C"/wheels/polars_runtime_32-*.whl)
    unpacked=$(mktemp -d)
    python -m zipfile -e "$runtime" "$unpacked"
    tar cJf "$C/polars_runtime.tar.xz" -C "$unpacked" .
    rm -rf "$unpacked" "$runtime"
    python -m submission vocab --out "$C/harmony"
    xz -f "$C/harmony/tokenizer.json"
    python -c "import sys; from pathlib import Path; from submission.standin import \
build_qwen_tokenizer; build_qwen_tokenizer(Path(sys.argv[1]))" "$C/tokenizer"
    tar cJf "$C/tokenizer.tar.xz" -C "$C" tokenizer
    rm -rf "$C/tokenizer"
    grep -qxF "/$C/" .git/info/exclude 2>/dev/null || echo "/$C/" >>.git/info/exclude
    du -sh "$C"
}

run() {
    local results=/tmp/gpu-results site=/tmp/gpu-site
    mkdir -p "$site" "$results/smoke" "$results/collect"
    {
        tar xJf "$C/polars_runtime.tar.xz" -C "$site"
        python3 -m pip install -q --no-index --no-deps --target "$site" "$C"/wheels/*.whl
        xz -dkf "$C/harmony/tokenizer.json.xz"
        tar xJf "$C/tokenizer.tar.xz" -C "$C"
        python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
        nvidia-smi --query-gpu=name,memory.total --format=csv || true
    } >"$results/setup.log" 2>&1 || {
        cp "$results/setup.log" "$OUT/"
        tail -20 "$results/setup.log"
        exit 1
    }
    export PYTHONPATH=$site PYTHONUNBUFFERED=1
    # Caps inside the device's 10 minutes a command; each script keeps what it measured so far.
    timeout "${SMOKE_CAP_S:-170}" python3 -m tests.gpu_smoke_harmony --harmony-dir "$C/harmony" \
        --shape gpt-oss-20b --layers 2 --out "$results/smoke/smoke_harmony.json" \
        >"$results/smoke/smoke.log" 2>&1 || echo "smoke: exit $?"
    timeout "${COLLECT_CAP_S:-380}" python3 -m tests.gpu_collect_hf --out "$results/collect" \
        --tokenizer-dir "$C/tokenizer" --streams 1 8 32 64 --seeds 20 \
        >"$results/collect/run.log" 2>&1 || echo "collect: exit $?"
    local kept
    for kept in smoke/smoke_harmony.json smoke/smoke.log collect/summary.json collect/passk.md \
        collect/simulate.md collect/overhead.json collect/profile.json; do
        if [ -f "$results/$kept" ]; then cp "$results/$kept" "$OUT/"; fi
    done
    tar czf "$OUT/results.tgz" --exclude='*.parquet' -C "$results" .
    tail -c 3000 "$results/collect/run.log"
}

case "${1:-}" in
prepare) prepare ;;
run) run ;;
*)
    echo "usage: bash tests/gpu_runs.sh prepare|run [DIR]" >&2
    exit 2
    ;;
esac
