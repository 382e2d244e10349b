#!/usr/bin/env bash
# The GPU checks recorded in benchmarks/README.md ("GPU"), in one run on a CUDA machine, from the
# repository root:
#   1. the CUDA-marked tests (bf16 autocast, channels_last, pinned loaders, torch.compile);
#   2. `retino bench train` of ResNet50 at 512 px from the uint8 cache, against the lab report's
#      loop (img/s, MFU, data wait, peak memory);
#   3. the whole pipeline (`dvc exp run`, train.device=cuda) on a generated dataset;
#   4. `retino bench input` on camera-sized frames: the preprocess stage on all cores.
# Each step logs to OUT_DIR/<step>.log and goes on after a failure; the exit status is the number
# of failed steps. Python packages the machine lacks (dvc, mlflow, simplejpeg) are installed from
# wheels in .whl/ when that folder exists (no network there).
# Usage: benchmarks/gpu.sh [OUT_DIR [STEP ...]]   (STEPs: only those; a rerun in a short lease)
set -uo pipefail
out=$(realpath -m "${1:-gpu-out}")
only=" ${*:2} "
repo=$(pwd)
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$repo"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .whl/*.whl >"$out/wheels.log" 2>&1 || { echo "wheels failed"; tail "$out/wheels.log"; }
    export PYTHONPATH="$PYTHONPATH:/tmp/site" PATH="/tmp/site/bin:$PATH"
fi
command -v python >/dev/null || { mkdir -p /tmp/bin && ln -sf "$(command -v python3)" /tmp/bin/python \
    && export PATH="/tmp/bin:$PATH"; }  # the stages run `python`
failed=0
wants() { [ "$only" = "  " ] || [[ $only == *" $1 "* ]]; }  # wants STEP: is it to run?
step() {  # step NAME SECONDS COMMAND...: run it, log it, count a failure
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    wants "$name" || return 0
    echo "== $name"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "   exit $rc after $((SECONDS - start)) s"
    tail -n 25 "$out/$name.log"
    [ $rc -eq 0 ] || failed=$((failed + 1))
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c 'import sys, torch, torchvision; print(sys.version.split()[0], torch.__version__,
torchvision.__version__, torch.cuda.get_device_name(0))'
    nproc
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt"

step cuda-tests 150 python3 -m pytest -q -m cuda -p no:cacheprovider tests/training/test_cuda.py

if wants bench-train || wants bench-train-compiled; then
    python3 -m retino synth /tmp/s512 --train 640 --test 8 --size 512 --seed 1 >/dev/null
fi
step bench-train 150 python3 -m retino bench train --data /tmp/s512 --arch resnet50 --size 512 \
    --batch-size 64 --batches 30
step bench-train-compiled 240 python3 -m retino bench train --data /tmp/s512 --arch resnet50 \
    --size 512 --batch-size 64 --batches 30 --compile

pipeline() {  # (under bash -e) a DVC project as a user has one: this pipeline, generated data
    local project=/tmp/project
    rm -rf "$project" && mkdir -p "$project"
    cp -r "$repo/stages" "$repo/retino" "$repo/dvc.yaml" "$repo/params.yaml" "$project/"
    cd "$project"
    export PYTHONPATH="$project${PYTHONPATH#"$repo"}"
    git init -q && git config user.email gpu@localhost && git config user.name gpu
    python3 -m retino synth data --train 800 --test 200 --size 256 --seed 2026 >/dev/null
    dvc init -q && dvc config core.analytics false && dvc add -q data
    git add -A && git commit -qm "generated dataset"
    dvc exp run -S train.device=cuda -S arch=resnet50 -S data.image_size=224 \
        -S train.epochs=4 -S train.batch_size=64
    cat reports/train/history.csv reports/eval/metrics.json
    python3 -c 'import mlflow; r = mlflow.search_runs(experiment_names=["retino"]).iloc[0]
print(r["tags.mlflow.runName"], r.status, r["tags.device"])'
}
export repo && export -f pipeline
step pipeline 170 bash -ec pipeline

if wants bench-input; then
    python3 -m retino synth /tmp/frames --train 96 --test 4 --frame 3888x2592 --seed 1 >/dev/null
fi
step bench-input 100 python3 -m retino bench input --data /tmp/frames --size 512 --batch-size 16 \
    --batches 3

echo "failed steps: $failed"
exit "$failed"
