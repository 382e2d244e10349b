#!/usr/bin/env bash
# The GPU checks recorded in benchmarks/README.md ("GPU"), in one run on a CUDA machine, from the
# repository root (about 8 minutes on an H100/H200 with 16 cores; each step has its own limit):
#   cuda-tests          the CUDA-marked tests: the cache feed, steps that never wait for the GPU
#                       (torch's sync debug mode), compile and its 32 px guard, training and
#                       grading eager and compiled, the kappa recipe, nvJPEG against the CPU path
#   bench-r50           `retino bench train` ResNet50 at 512 px, batch 64, beside the lab
#                       report's loop: img/s, MFU, data wait and input share, peak memory, for the
#                       cache in GPU memory, streamed, and the old loader workers
#   bench-r50-compiled  the same at batch 128, torch.compile (default mode)
#   bench-r18           ResNet18 at 512 px, batch 128, beside the lab report's loop
#   bench-preprocess    the preprocess stage on 3888x2592 camera frames: CPU processes vs nvJPEG
#   pipeline            `dvc exp run` on the GPU (train.device=cuda) on a generated dataset
# Named only (not in a plain run): bench-r50-cudagraphs (compile mode reduce-overhead, batch
# 128), bench-r50-b256 (eager, batch 256), bench-r18-compiled (batch 256, compiled).
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
named() { [[ $only == *" $1 "* ]]; }
wants() { [ "$only" = "  " ] || named "$1"; }  # wants STEP: is it to run?
step() {  # step NAME SECONDS COMMAND...: run it, log it, count a failure
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    wants "$name" || return 0
    run_step "$name" "$limit" "$start" "$@"
}
extra() {  # extra NAME SECONDS COMMAND...: as step, but only when named
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    named "$name" || return 0
    run_step "$name" "$limit" "$start" "$@"
}
run_step() {
    local name=$1 limit=$2 start=$3
    shift 3
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

step cuda-tests 300 python3 -m pytest -q -m cuda -p no:cacheprovider -rA -s \
    tests/training/test_cuda.py tests/data/test_gpu_decode.py

bench=(python3 -m retino bench train --data /tmp/s512 --size 512 --batches 20)
if wants bench-r50 || wants bench-r50-compiled || wants bench-r18 || named bench-r50-cudagraphs \
    || named bench-r50-b256 || named bench-r18-compiled; then
    python3 -m retino synth /tmp/s512 --train 640 --test 8 --size 512 --seed 1 >/dev/null
fi
step bench-r50 150 "${bench[@]}" --arch resnet50 --batch-size 64
step bench-r50-compiled 300 "${bench[@]}" --arch resnet50 --batch-size 128 --compile \
    --no-lab-report
step bench-r18 150 "${bench[@]}" --arch resnet18 --batch-size 128
extra bench-r50-cudagraphs 300 "${bench[@]}" --arch resnet50 --batch-size 128 \
    --compile reduce-overhead --no-lab-report
extra bench-r50-b256 150 "${bench[@]}" --arch resnet50 --batch-size 256 --no-lab-report
extra bench-r18-compiled 300 "${bench[@]}" --arch resnet18 --batch-size 256 --compile \
    --no-lab-report

if wants bench-preprocess; then
    python3 -m retino synth /tmp/frames --train 192 --test 4 --frame 3888x2592 --seed 1 >/dev/null
fi
step bench-preprocess 200 python3 -m retino bench preprocess --data /tmp/frames --size 512 \
    --images 192

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
    # preprocess.device and data.cache_device stay auto: nvJPEG, and the splits in GPU memory
    dvc exp run -S train.device=cuda -S arch=resnet50 -S data.image_size=224 \
        -S train.epochs=4 -S train.batch_size=64
    python3 -c 'import json; print("decoder:", json.load(open("preprocessed/index.json"))["decoder"])'
    cat reports/train/history.csv reports/eval/metrics.json
    python3 -c 'import mlflow; r = mlflow.search_runs(experiment_names=["retino"]).iloc[0]
print(r["tags.mlflow.runName"], r.status, r["tags.device"])'
}
export repo && export -f pipeline
step pipeline 200 bash -ec pipeline

echo "failed steps: $failed"
exit "$failed"
