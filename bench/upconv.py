"""Forward + backward ms of the decoders' transposed convolutions: nn.ConvTranspose2d vs UpConv2d.

Each layer of the SVHN and caption decoders (channels-last, the shapes of a decoder call over
``--*-batch`` latents) and each whole decoder is timed both ways in one process, old and new
alternating ``--reps`` times, per precision (bf16 = autocast, as ``Modality.set_precision``);
the medians are printed as a Markdown table for BENCHMARKS.md. A loaded machine shifts both
columns alike, so the ratio is the figure to read.

    python -m bench.upconv [--svhn-batch 7680 128] [--caption-batch 128] [--precision fp32 bf16]
                           [--reps 5] [--threads 1]

7,680 latents = K=30 x 2 modalities x batch 128 (the MMVAE bench step); 128 = K=2 x 2 x batch 32
(the shipped recipes). ``--step dataset:K:batch ...`` times whole MMVAE training steps
(bench/train_step.py's loss, Adam) the same way: one model and an exact copy with plain
nn.ConvTranspose2d layers, alternating steps (the birds steps take the looser bound, as their
recipe).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn as nn

from bench.train_step import batch as data_batch
from bench.train_step import build
from engine.config import ObjectiveConfig
from engine.loss import variant_loss
from engine.models.modalities import PRECISIONS, SVHN, CUBSentence
from engine.models.upconv import UpConv2d


def plain(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose UpConv2d layers are plain nn.ConvTranspose2d (same parameters)."""
    module = copy.deepcopy(module)
    for m in module.modules():
        if isinstance(m, UpConv2d):
            m.__class__ = nn.ConvTranspose2d
    return module


def layer_inputs(decoder: nn.Sequential, z: torch.Tensor) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """(name, layer, input) for each transposed convolution of ``decoder`` run on ``z``."""
    out, h = [], z
    with torch.no_grad():
        for m in decoder:
            if isinstance(m, UpConv2d):
                k, s, p = (t if t[0] != t[1] else t[0] for t in (m.kernel_size, m.stride, m.padding))
                name = f"{m.in_channels}->{m.out_channels}, {tuple(h.shape[2:])} in, k{k} s{s} p{p}"
                out.append((name, m, h.contiguous(memory_format=torch.channels_last)))
            h = m(h)
    return out


def fwd_bwd(module: nn.Module, x: torch.Tensor, precision: str, grad: torch.Tensor | None = None) -> float:
    """Seconds for one forward and backward (input, weight and bias gradients) under ``precision``,
    for the output gradient ``grad`` (a random one in the output's dtype and layout, as a ReLU's
    backward would pass it, if None)."""
    x = x.detach().requires_grad_()
    module.zero_grad(set_to_none=True)
    t = time.perf_counter()
    with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        y = module(x)
    y.backward(torch.randn_like(y) if grad is None else grad)
    return time.perf_counter() - t


def ab(new: nn.Module, x: torch.Tensor, precision: str, reps: int) -> tuple[float, float]:
    """Median ms (old, new), old and new alternating, for one fixed output gradient."""
    old = plain(new)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        grad = torch.randn_like(old(x))
    fwd_bwd(old, x, precision, grad), fwd_bwd(new, x, precision, grad)
    t_old, t_new = [], []
    for _ in range(reps):
        t_old.append(fwd_bwd(old, x, precision, grad))
        t_new.append(fwd_bwd(new, x, precision, grad))
    return 1000 * statistics.median(t_old), 1000 * statistics.median(t_new)


def step_ab(spec: str, precision: str, reps: int) -> tuple[float, float]:
    """Median ms per MMVAE training step (old, new) for ``dataset:K:batch``, steps alternating."""
    dataset, K, B = spec.split(":")
    torch.manual_seed(0)
    device = torch.device("cpu")
    new = build(dataset, "mmvae", device, precision)
    old = plain(new)
    xs = data_batch(dataset, int(B), device)
    obj = ObjectiveConfig(K=int(K), N=5, looser=dataset != "mnist-svhn")
    opts = {id(m): torch.optim.Adam(m.parameters(), lr=1e-4) for m in (old, new)}

    def step(model) -> float:
        t = time.perf_counter()
        opts[id(model)].zero_grad(set_to_none=True)
        variant_loss(model, xs, obj).loss.backward()
        opts[id(model)].step()
        return time.perf_counter() - t

    step(old), step(new)
    t_old, t_new = [], []
    for _ in range(reps):
        t_old.append(step(old))
        t_new.append(step(new))
    return 1000 * statistics.median(t_old), 1000 * statistics.median(t_new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--svhn-batch", type=int, nargs="*", default=[7680, 128], help="latents per SVHN decoder call")
    ap.add_argument("--caption-batch", type=int, nargs="*", default=[128], help="latents per caption decoder call")
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=list(PRECISIONS))
    ap.add_argument("--step", nargs="*", default=[], metavar="DATASET:K:BATCH",
                    help="whole MMVAE steps, e.g. mnist-svhn:30:128 mnist-svhn:2:32 cub-synthetic:2:32")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    runs = [("svhn", SVHN(20), a.svhn_batch), ("caption", CUBSentence(64, 1590), a.caption_batch)]
    print(f"torch {torch.__version__}, {a.threads} thread(s), median of {a.reps} alternating reps\n")
    print("| decoder | layer | batch | precision | ConvTranspose2d ms | UpConv2d ms | new / old |")
    print("|---|---|---:|---|---:|---:|---:|")
    for key, mod, batches in runs:
        for n in batches:
            z = torch.randn(n, mod.latent_dim)
            rows = [(name, m, x) for name, m, x in layer_inputs(mod.decoder, z)]
            rows.append(("whole decoder", mod.decoder, z))
            for precision in a.precision:
                for name, m, x in rows:
                    old, new = ab(m, x, precision, a.reps)
                    print(f"| {key} | {name} | {n} | {precision} | {old:.1f} | {new:.1f} | {new / old:.2f} |", flush=True)
    for spec in a.step:
        dataset, K, B = spec.split(":")
        for precision in a.precision:
            old, new = step_ab(spec, precision, a.reps)
            print(f"| {dataset} | MMVAE training step, K={K} | {B} | {precision} | {old:.0f} | {new:.0f} | "
                  f"{new / old:.2f} |", flush=True)


if __name__ == "__main__":
    main()
