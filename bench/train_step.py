"""ms per training step for the variants (batch 128, K=30, N=5 by default) on this device, per precision.

For each ``--precision`` the table gives ms/step, GFLOP per step (torch.utils.flop_counter:
matmuls and convolutions, forward and backward), achieved GFLOP/s, that rate as a share of this
machine's measured GEMM peak for the precision (a large square matmul timed here), and the
ratio to the family's baseline. ``--dataset cub-synthetic`` times the bird modalities (1280-d
image features, 32-token captions) instead. A naive cI-MMVAE that re-encodes and re-decodes
every negative in a Python loop is timed too (fp32, MNIST-SVHN only). Prints Markdown tables
for BENCHMARKS.md.

    python -m bench.train_step [--precision fp32 bf16] [--batch-size 128] [--K 30] [--N 5]
                               [--steps 3] [--variants ...] [--dataset mnist-svhn|cub-synthetic]
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from engine import objectives as O
from engine.config import ObjectiveConfig
from engine.device import pick_device
from engine.loss import sample_negatives, variant_loss
from engine.models import build_model
from engine.models.modalities import PRECISIONS
from engine.registry import VARIANTS, parse_variant

CUB_VOCAB, CUB_FEATURES = 1590, 1280


def naive_ci_mmvae_loss(model, xs, obj: ObjectiveConfig) -> torch.Tensor:
    """cI-MMVAE with one full forward per negative (the per-negative loop the fast path avoids)."""
    x, y = xs
    term1 = O.iwae(model.log_weights(model(xs, obj.K)))
    negx = sample_negatives(x.shape[0], obj.N, device=x.device)
    negy = sample_negatives(x.shape[0], obj.N, device=x.device)
    lx = torch.stack([O.iwae(model.log_weights(model([x[negx[:, n]], y], obj.K))) for n in range(obj.N)], -1)
    ly = torch.stack([O.iwae(model.log_weights(model([x, y[negy[:, n]]], obj.K))) for n in range(obj.N)], -1)
    return O.contrastive(term1, lx, ly, obj.gamma).mean()


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def gemm_peak(precision: str, device, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of an n x n x n matmul in ``precision`` (best of ``reps``): this machine's GEMM rate."""
    dtype = PRECISIONS[precision]
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


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
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    return 1000 * times[len(times) // 2], fc.get_total_flops() / 1e9


def batch(dataset: str, B: int, device) -> list[torch.Tensor]:
    """Random data of the dataset's shapes (speed does not depend on the values)."""
    if dataset == "mnist-svhn":
        return [torch.rand(B, 1, 28, 28, device=device), torch.rand(B, 3, 32, 32, device=device)]
    caps = torch.randint(4, CUB_VOCAB, (B, 32), device=device)
    caps[:, 24:] = 0
    caps[:, 23] = 1
    return [torch.randn(B, CUB_FEATURES, device=device), caps]


def build(dataset: str, family: str, device, precision: str):
    kw = {} if dataset == "mnist-svhn" else {"latent_dim": 64, "vocab_size": CUB_VOCAB, "feature_dim": CUB_FEATURES}
    return build_model(dataset, family, **kw).to(device).set_precision(precision)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=list(PRECISIONS))
    ap.add_argument("--dataset", default="mnist-svhn", choices=("mnist-svhn", "cub-synthetic"))
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--K", type=int, default=30)
    ap.add_argument("--N", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--looser", action="store_true", help="MMVAE variants with the looser stratified bound")
    ap.add_argument("--no-naive", action="store_true")
    a = ap.parse_args()
    device = pick_device(a.device)
    B = a.batch_size
    xs = batch(a.dataset, B, device)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dev = (torch.cuda.get_device_name() if device.type == "cuda"
           else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    print(f"Device: {dev}; torch {torch.__version__}; commit {commit}; {a.dataset}; batch {B}, K={a.K}, N={a.N}; "
          f"median of {a.steps} steps\n")
    for precision in a.precision:
        peak = gemm_peak(precision, device)
        rows = []
        for name in a.variants:
            family, contrastive = parse_variant(name)
            torch.manual_seed(0)
            model = build(a.dataset, family, device, precision)
            obj = ObjectiveConfig(contrastive=contrastive, K=a.K, N=a.N, looser=a.looser and model.supports_looser)
            ms, gf = time_step(lambda: variant_loss(model, xs, obj).loss, model, a.steps, device)
            rows.append((name, ms, gf))
            print(f"{precision} {name}: {ms:.0f} ms", flush=True)
        if not a.no_naive and a.dataset == "mnist-svhn" and precision == "fp32":
            model = build(a.dataset, "mmvae", device, precision)
            obj = ObjectiveConfig(contrastive="iwae", K=a.K, N=a.N)
            ms, gf = time_step(lambda: naive_ci_mmvae_loss(model, xs, obj), model, a.steps, device)
            rows.append(("naive cI-MMVAE (loop over negatives)", ms, gf))
        base = {r[0]: r[1] for r in rows}
        print(f"\n### {precision} (GEMM peak measured here: {peak:.0f} GFLOP/s)\n")
        print("| variant | ms/step | GFLOP/step | GFLOP/s | share of GEMM peak | ratio to baseline |")
        print("|---|---:|---:|---:|---:|---|")
        for name, ms, gf in rows:
            naive = name.startswith("naive")
            fam = "cI-MMVAE" if naive else name.split("-")[-1]
            ref = base.get(fam)
            ratio = f"{ms / ref:.2f}x {fam}" if ref and name != fam else ""
            rate = gf / (ms / 1000)
            print(f"| {name} | {ms:.0f} | {gf:.1f} | {rate:.1f} | {100 * rate / peak:.0f}% | {ratio} |")
        print(flush=True)


if __name__ == "__main__":
    main()
