#!/usr/bin/env bash
# The GPU checks in one run (about 9 minutes on one H200), every figure also in OUTPUT_FOLDER/figures.json:
#  1. the CUDA tests;
#  2. DINO ViT-S/16, 2 x 224 + 8 x 96 crops, bf16, batch 256, --compile: images/s, MFU, data-wait share with
#     the decoded store and with the loader (goal: 40 % MFU, about 3,200 images/s);
#  3. BYOL ResNet-18 at 128 px, batch 256, on the store for about 3 minutes, then probe knn on val
#     (reference: lightly's Imagenette benchmark, about 590 images/s on an RTX A6000; goal: 10x);
#  4. the input pipelines alone (store, loader) and JPEG decoding (Pillow workers against nvjpeg).
#
#     bash benchmarks/gpu_check.sh [OUTPUT_FOLDER] [DATA]   # defaults: gpu-check/, data/imagenette_160
#
# DATA is an ImageFolder tree with train/ and val/ (copy ../shared/data/imagenette_160 into the repo's
# git-ignored data/ to carry it to a GPU machine). A failing step does not stop the rest.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
data=${2:-data/imagenette_160}
mkdir -p "$out"
python=${PYTHON:-.venv/bin/python}
export SSLKIT_STORE_DIR="$out/stores" SSLKIT_CACHE_DIR="$out/features"
workers=$(( $(nproc) - 1 ))
dino=(--method dino --arch vit_small_patch16_224 --img-size 224 --batch-size 256 --steps 24 --log-every 4
      --repeats 1 --device cuda --precision bf16 --compile --workers "$workers" --data "$data/train"
      --set local_crops_number=8)

step() {
    local name=$1; shift
    echo "== $name: $*"
    timeout "${STEP_SECONDS:-300}" "$@" 2>&1 | grep -v "━" | tee "$out/$name.log"
}

nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
step cuda-tests "$python" -m pytest -q -x tests/engine/test_cuda.py tests/data/test_geometry.py
step dino-store "$python" benchmarks/throughput.py "${dino[@]}" --data-path store --json "$out/dino-store.json"
step dino-loader "$python" benchmarks/throughput.py "${dino[@]}" --data-path loader --json "$out/dino-loader.json"
STEP_SECONDS=210 step byol-train "$python" -m sslkit pretrain byol "$data/train" --out "$out/byol" --arch resnet18 \
    --img-size 128 --batch-size 256 --epochs 60 --precision bf16 --data-path store --save-every 5 --quiet \
    --compile
step byol-knn "$python" -m sslkit probe knn "$out/byol" --train "$data/train" --val "$data/val" \
    --json "$out/byol-knn.json" --quiet
step pipeline "$python" benchmarks/pipeline.py --method dino byol --img-size 224 --local-crops-number 8 \
    --batch-size 256 --batches 6 --workers "$workers" --repeats 2 --augment-on cpu --data "$data/train"
step decode "$python" benchmarks/decode.py --data "$data/train" --images 1024 --workers 4 "$workers" \
    --json "$out/decode.json"
"$python" - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
figures = {}
for name in ("dino-store", "dino-loader", "byol-knn", "decode"):
    path = out / f"{name}.json"
    figures[name] = json.loads(path.read_text()) if path.is_file() else None
metrics = out / "byol" / "metrics.jsonl"
if metrics.is_file():
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    speeds = sorted(r["img_per_s"] for r in records if "loss" in r)
    figures["byol-train"] = {"epochs": max(r["epoch"] for r in records), "median_img_per_s": speeds[len(speeds) // 2],
                             "data_wait": sorted(r["data_wait"] for r in records if "loss" in r)[len(speeds) // 2]}
(out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
print(json.dumps(figures, indent=2))
EOF
