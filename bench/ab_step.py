"""Time one bird MMVAE training step (batch 32, K=2, N=5, looser bound, one thread) of the engine at a
given source tree, so that an old commit and the current code can be timed in the same sitting:

    git worktree add /tmp/old a446157^          # the code before issue #13's work
    python bench/ab_step.py /tmp/old fp32
    python bench/ab_step.py . bf16

Prints the median and the fastest of 9 steps (after 3 warm-up steps), in ms. Works with the engine's
``variant_loss`` before and after it stopped taking the family as an argument, and uses the trainer's
optimiser where the tree has ``engine.train.optimizer`` (plain AMSGrad Adam before). Run it as the
engine's CLI runs (``THP_MEM_ALLOC_ENABLE=1``, which ``python -m engine`` sets) to time what training gets.
"""
from __future__ import annotations

import inspect
import sys
import time

import torch


def main(root: str, precision: str, steps: int = 9) -> None:
    sys.path.insert(0, root)
    torch.set_num_threads(1)
    from engine.config import ObjectiveConfig
    from engine.loss import variant_loss
    from engine.models import build_model

    torch.manual_seed(0)
    model = build_model("cub-synthetic", "mmvae", latent_dim=64, vocab_size=1590, feature_dim=1280)
    if precision != "fp32":
        model.set_precision(precision)
    caps = torch.randint(4, 1590, (32, 32))
    caps[:, 24:], caps[:, 23] = 0, 1
    xs, obj = [torch.randn(32, 1280), caps], ObjectiveConfig(K=2, N=5, looser=True)
    takes_family = "family" in inspect.signature(variant_loss).parameters
    try:
        from engine.train import optimizer                   # the trainer's own optimiser, where it has one
        opt = optimizer(model, 1e-3)
    except ImportError:
        opt = torch.optim.Adam(model.parameters(), 1e-3, amsgrad=True)

    def step() -> float:
        t = time.perf_counter()
        out = variant_loss(model, xs, "mmvae", obj) if takes_family else variant_loss(model, xs, obj)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        return time.perf_counter() - t

    for _ in range(3):
        step()
    times = sorted(step() for _ in range(steps))
    print(f"{root} {precision}: median {1000 * times[steps // 2]:.0f} ms, fastest {1000 * times[0]:.0f} ms")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "fp32")
