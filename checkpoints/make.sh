#!/usr/bin/env bash
# Re-create the shipped checkpoints on the offline defaults (CPU preset; see checkpoints/README.md).
# Runs train under runs/shipped-src/ (full checkpoints, resumable), then are exported here as small
# fp16 inference-only copies of each run's last weights (checkpoint.pt, not best.pt: held-out IWAE
# flattens long before coherence does; reports/diagnosis H12) with their relatedness arrays and metrics.
# Usage: bash checkpoints/make.sh [NAME ...]   (default: all five and features; NAME as the folders here)
# Two names run well side by side on a 2-core CPU with OMP_NUM_THREADS=1 each.
set -euo pipefail
cd "$(dirname "$0")/.."
src=runs/shipped-src
# The training settings are the presets shipped-mnist-svhn / shipped-cub-synthetic (engine/config.py).
common=(--no-progress --resume --allow-fresh)
ship() {  # $1 = run name, then relatedness pairs / K, evaluation samples / test pairs / IWAE samples
  python -m engine export "$src/$1/checkpoint.pt" --out "checkpoints/$1"
  python -m engine relatedness "checkpoints/$1" --pairs "$2" --K "$3" --json --device cpu
  python -m engine evaluate "checkpoints/$1" --samples "$4" --test-pairs "$5" --ll-samples "$6" --ll-pairs 200 \
    --device cpu --no-progress
}
make_one() {
  local name=$1 model=${1#*-*-}
  case "$name" in
    mnist-svhn-*)
      python -m engine train --preset shipped-mnist-svhn --model "$model" --dataset mnist-svhn "${common[@]}" \
        --out "$src/$name"
      ship "$name" 500 10 2000 2000 100 ;;
    cub-synthetic-*)
      python -m engine train --preset shipped-cub-synthetic --model "$model" --dataset cub-synthetic "${common[@]}" \
        --out "$src/$name"
      ship "$name" 300 5 500 5000 0 ;;
    features)  # the birds' test-split features the Retrieval page starts from (engine/data/features.py)
      python -m engine data ship-features --out checkpoints/features ;;
    *) echo "unknown checkpoint name $name" >&2; exit 2 ;;
  esac
}
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(mnist-svhn-MMVAE mnist-svhn-cI-MMVAE mnist-svhn-cC-MMVAE
                                   cub-synthetic-MMVAE cub-synthetic-cI-MMVAE features)
for n in "${names[@]}"; do make_one "$n"; done
