"""PMI scoring speed: pairs/s for score_pairs and the time of a 1,000 x 1,000 score_matrix.

    python -m bench.pmi [--run checkpoints/mnist-svhn-cI-MMVAE] [--K 30] [--pairs 2000] [--matrix 1000]
                        [--generic 200] [--precision fp32|bf16]
Without --run, an untrained cI-MMVAE is timed (speed does not depend on training). ``--generic``
also times the model-agnostic block path (forward + log_weights per block of pairs) on a smaller
matrix, against which MMVAE's all-pairs kernel (MMVAE.pairwise_log_weights) is compared.
"""
from __future__ import annotations

import argparse
import time

import torch

import engine
from engine.device import pick_device
from engine.models import build_model
from engine.relatedness import _score_matrix_blocks, score_matrix, score_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None)
    ap.add_argument("--K", type=int, default=30)
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--matrix", type=int, default=1000)
    ap.add_argument("--generic", type=int, default=200, help="side of the block-path matrix (0: skip)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                    help="the encoders' and decoders' precision (likelihoods stay fp32)")
    a = ap.parse_args()
    if a.run:
        model = engine.load(a.run, device=a.device)
    else:
        model = build_model("mnist-svhn", "mmvae").to(pick_device(a.device)).eval()
    model.set_precision(a.precision)
    torch.manual_seed(0)
    xs, ys = torch.rand(a.pairs, 1, 28, 28), torch.rand(a.pairs, 3, 32, 32)
    t = time.perf_counter()
    score_pairs(model, xs, ys, K=a.K, progress=False)
    sp = time.perf_counter() - t
    n = a.matrix
    t = time.perf_counter()
    score_matrix(model, xs[:n], ys[:n], K=a.K, progress=False)
    sm = time.perf_counter() - t
    g = a.generic
    if g:
        t = time.perf_counter()
        _score_matrix_blocks(model, xs[:g], ys[:g], a.K, 0, 64, False)
        sg = time.perf_counter() - t
    print(f"model: {a.run or 'untrained cI-MMVAE'}; device {model.device}; K={a.K}; {a.precision}\n")
    print("| what | size | seconds | rate |\n|---|---:|---:|---:|")
    print(f"| score_pairs | {a.pairs} pairs | {sp:.1f} | {a.pairs / sp:.0f} pairs/s |")
    print(f"| score_matrix | {n} x {n} | {sm:.1f} | {n * n / sm:.0f} pairs/s |")
    if g:
        print(f"| score_matrix, generic block path | {g} x {g} | {sg:.1f} | {g * g / sg:.0f} pairs/s |")


if __name__ == "__main__":
    main()
