#!/usr/bin/env bash
# The GPU checks in one run (about 10 minutes on one H200): the CUDA tests, then DINO ViT-S/16 at 224 px in
# bf16 (images/s, peak memory, MFU) eager, compiled and with the colour augmentations on the GPU, then
# whether the data pipeline keeps up (its images/s with the machine's cores as workers).
#
#     bash benchmarks/gpu_check.sh [OUTPUT_FOLDER]      # default: gpu-check/
#
# Each step's output goes to OUTPUT_FOLDER/<step>.log and to the screen; a failing step does not stop the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
mkdir -p "$out"
python=${PYTHON:-.venv/bin/python}
workers=$(( $(nproc) - 1 ))
dino=(--method dino --arch vit_small_patch16_224 --img-size 224 --batch-size 128 --steps 20 --log-every 5
      --repeats 3 --device cuda --precision bf16 --workers "$workers" --set local_crops_number=8)

step() {
    local name=$1; shift
    echo "== $name: $*"
    "$@" 2>&1 | grep -v "━" | tee "$out/$name.log"
}

step cuda-tests "$python" -m pytest -q tests/engine/test_cuda.py
step dino-eager "$python" benchmarks/throughput.py "${dino[@]}"
step dino-compiled "$python" benchmarks/throughput.py "${dino[@]}" --compile
step dino-augment-on-gpu "$python" benchmarks/throughput.py "${dino[@]}" --set augment_on=device
step pipeline "$python" benchmarks/pipeline.py --method dino --img-size 224 --local-crops-number 8 \
    --batch-size 128 --batches 6 --workers "$workers" --repeats 2
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
