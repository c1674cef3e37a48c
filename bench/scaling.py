"""Training-step scaling with K and N, and peak memory per step vs K with and without --k-chunk.

Each memory row runs in a fresh subprocess and reports its peak resident memory (CPU) or peak
CUDA allocation, so rows do not contaminate each other. Prints Markdown tables for BENCHMARKS.md.

    python -m bench.scaling [--batch-size 128] [--Ks 1 5 30] [--Ns 1 5 10] [--mem-Ks 5 30 100] [--k-chunk 5]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from engine.config import ObjectiveConfig
from engine.device import pick_device
from engine.loss import variant_loss
from engine.models import build_model
from engine.registry import parse_variant

ROOT = Path(__file__).resolve().parents[1]


def one_step(variant: str, B: int, K: int, N: int, k_chunk: int | None, steps: int, device: str) -> dict:
    """Time ``steps`` optimiser steps and measure peak memory, in this process."""
    dev = pick_device(device)
    torch.manual_seed(0)
    family, contrastive = parse_variant(variant)
    model = build_model("mnist-svhn", family).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    xs = [torch.rand(B, 1, 28, 28, device=dev), torch.rand(B, 3, 32, 32, device=dev)]
    obj = ObjectiveConfig(contrastive=contrastive, K=K, N=N)
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        variant_loss(model, xs, obj, k_chunk=k_chunk).loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    ms = 1000 * sorted(times)[len(times) // 2]
    return {"ms": ms, "pairs_per_s": B / (ms / 1000), "peak_mib": peak}


def in_subprocess(**kw) -> dict:
    code = f"import json; from bench.scaling import one_step; print(json.dumps(one_step(**{kw!r})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="cI-MMVAE")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--Ks", type=int, nargs="*", default=[1, 5, 30])
    ap.add_argument("--Ns", type=int, nargs="*", default=[1, 5, 10])
    ap.add_argument("--mem-Ks", type=int, nargs="*", default=[5, 30, 100])
    ap.add_argument("--k-chunk", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    B, v = a.batch_size, a.variant
    print(f"### {v}: throughput vs K (N=5) and N (K=30 or the largest K given), batch {B}\n")
    print("| K | N | ms/step | pairs/s |\n|---:|---:|---:|---:|")
    for K in a.Ks:
        r = in_subprocess(variant=v, B=B, K=K, N=5, k_chunk=None, steps=a.steps, device=a.device)
        print(f"| {K} | 5 | {r['ms']:.0f} | {r['pairs_per_s']:.0f} |", flush=True)
    for N in a.Ns:
        r = in_subprocess(variant=v, B=B, K=max(a.Ks), N=N, k_chunk=None, steps=a.steps, device=a.device)
        print(f"| {max(a.Ks)} | {N} | {r['ms']:.0f} | {r['pairs_per_s']:.0f} |", flush=True)
    print(f"\n### {v}: peak memory per step vs K, batch {B}, N=5 (k-chunk {a.k_chunk})\n")
    print("| K | peak MiB | peak MiB, chunked | ms/step | ms/step, chunked |\n|---:|---:|---:|---:|---:|")
    for K in a.mem_Ks:
        r0 = in_subprocess(variant=v, B=B, K=K, N=5, k_chunk=None, steps=1, device=a.device)
        r1 = in_subprocess(variant=v, B=B, K=K, N=5, k_chunk=a.k_chunk, steps=1, device=a.device)
        print(f"| {K} | {r0['peak_mib']:.0f} | {r1['peak_mib']:.0f} | {r0['ms']:.0f} | {r1['ms']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
