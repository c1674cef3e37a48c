#!/usr/bin/env bash
# Re-create the shipped checkpoints on the offline defaults (CPU preset; see checkpoints/README.md).
# Runs train under runs/shipped-src/ (full checkpoints, resumable), then are exported here as small
# fp16 inference-only copies with their relatedness arrays and metrics.
# Usage: bash checkpoints/make.sh [mnist-svhn|cub|all]
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
src=runs/shipped-src
common=(--batch-size 128 --K 5 --negatives 5 --gamma 2 --lr 1e-3 --seed 0 --no-progress --resume)
ship() {  # $1 = run name, then relatedness/evaluate sizes
  python -m engine export "$src/$1" --out "checkpoints/$1"
  python -m engine relatedness "checkpoints/$1" --pairs "$2" --K "$3" --json --device cpu
  python -m engine evaluate "checkpoints/$1" --samples "$4" --test-pairs "$5" --ll-samples "$6" --ll-pairs 200 \
    --device cpu --no-progress
}
if [[ "$what" == mnist-svhn || "$what" == all ]]; then
  for m in MMVAE cI-MMVAE cC-MMVAE; do
    python -m engine train --model "$m" --dataset mnist-svhn --dm 1 --epochs 4 "${common[@]}" --out "$src/mnist-svhn-$m"
    ship "mnist-svhn-$m" 500 10 2000 2000 100
  done
fi
if [[ "$what" == cub || "$what" == all ]]; then
  for m in MMVAE cI-MMVAE; do
    python -m engine train --model "$m" --dataset cub-synthetic --epochs 1 "${common[@]}" --out "$src/cub-synthetic-$m"
    ship "cub-synthetic-$m" 300 5 500 1000 0
  done
fi
