"""ms per training step for the nine variants (batch 128, K=30, N=5 by default) on this device.

Also times a naive cI-MMVAE that re-encodes and re-decodes every negative in a Python loop over
the N negatives, and reports achieved GFLOP/s (torch.utils.flop_counter: matmuls and convolutions,
forward and backward) beside the ms. Prints a Markdown table for BENCHMARKS.md.

    python bench/train_step.py [--batch-size 128] [--K 30] [--N 5] [--steps 3] [--variants ...]
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from torch.utils.flop_counter import FlopCounterMode

from engine import objectives as O  # noqa: E402
from engine.config import ObjectiveConfig
from engine.device import pick_device
from engine.loss import sample_negatives, variant_loss
from engine.models import build_model
from engine.registry import VARIANTS, parse_variant


def naive_ci_mmvae_loss(model, xs, obj: ObjectiveConfig) -> torch.Tensor:
    """cI-MMVAE with one full forward per negative (the per-negative loop the fast path avoids)."""
    x, y = xs
    term1 = O.iwae(model.log_weights(model(xs, obj.K)))
    negx = sample_negatives(x.shape[0], obj.N, device=x.device)
    negy = sample_negatives(x.shape[0], obj.N, device=x.device)
    lx = torch.stack([O.iwae(model.log_weights(model([x[negx[:, n]], y], obj.K))) for n in range(obj.N)], -1)
    ly = torch.stack([O.iwae(model.log_weights(model([x, y[negy[:, n]]], obj.K))) for n in range(obj.N)], -1)
    return O.contrastive(term1, lx, ly, obj.gamma).mean()


def time_step(loss_fn, model, steps: int, device) -> tuple[float, float]:
    """Median ms per optimiser step and GFLOP per step."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    step()                                     # warm-up
    with FlopCounterMode(display=False) as fc:
        step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    times.sort()
    return 1000 * times[len(times) // 2], fc.get_total_flops() / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--K", type=int, default=30)
    ap.add_argument("--N", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--no-naive", action="store_true")
    a = ap.parse_args()
    device = pick_device(a.device)
    torch.manual_seed(0)
    B = a.batch_size
    xs = [torch.rand(B, 1, 28, 28, device=device), torch.rand(B, 3, 32, 32, device=device)]
    rows = []
    for name in a.variants:
        family, contrastive = parse_variant(name)
        model = build_model("mnist-svhn", family).to(device)
        obj = ObjectiveConfig(contrastive=contrastive, K=a.K, N=a.N)
        ms, gf = time_step(lambda: variant_loss(model, xs, family, obj).loss, model, a.steps, device)
        rows.append((name, ms, gf))
        print(f"{name}: {ms:.0f} ms", flush=True)
    if not a.no_naive:
        model = build_model("mnist-svhn", "mmvae").to(device)
        obj = ObjectiveConfig(contrastive="iwae", K=a.K, N=a.N)
        ms, gf = time_step(lambda: naive_ci_mmvae_loss(model, xs, obj), model, a.steps, device)
        rows.append(("naive cI-MMVAE (loop over negatives)", ms, gf))
    base = {r[0]: r[1] for r in rows}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dev = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"\nDevice: {dev}; torch {torch.__version__}; commit {commit}; batch {B}, K={a.K}, N={a.N}; median of {a.steps} steps\n")
    print("| variant | ms/step | GFLOP/step | GFLOP/s | ratio to baseline |")
    print("|---|---:|---:|---:|---|")
    for name, ms, gf in rows:
        fam = name.split()[-1] if name.startswith("naive") else name.split("-")[-1]
        if name.startswith("naive"):
            ref = base.get("cI-MMVAE")
            ratio = f"{ms / ref:.2f}x cI-MMVAE" if ref else ""
        else:
            ref = base.get(fam)
            ratio = f"{ms / ref:.2f}x {fam}" if ref and name != fam else ""
        print(f"| {name} | {ms:.0f} | {gf:.1f} | {gf / (ms / 1000):.1f} | {ratio} |")


if __name__ == "__main__":
    main()
