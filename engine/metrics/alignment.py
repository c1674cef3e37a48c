"""Expert alignment: do the two unimodal posteriors agree on paired items, and do cross-decodes
depend on their input?

Two diagnostics that make expert collapse and misalignment visible at a glance:

- **paired vs random expert distance**: the mean L1 distance between the posterior means
  E[z | x_i] and E[z | y_i] of *paired* items, against that of random (unpaired) items. A ratio
  paired / random near 1 means the experts put the same pair in unrelated places (unaligned);
  well below 1, they agree.
- **cross-decode spread**: the per-coordinate standard deviation across items of what modality n's
  decoder makes of modality m's latents (cross generation), against the same for modality n's
  own latents (reconstruction). A ratio near 0 means the decoder ignores the other expert's
  latents and emits nearly one output for every item (the conditional mean).
"""
from __future__ import annotations

import torch

from engine.captions import eval_mode


def _spread(params: torch.Tensor) -> float:
    """Mean over coordinates of the standard deviation across items (dim 0) of decoder outputs."""
    return params.flatten(1).float().std(0).mean().item()


@torch.no_grad()
def expert_alignment(model, xs: list[torch.Tensor], generator: torch.Generator | None = None) -> dict:
    """Both diagnostics for a two-modality ``model`` on paired items ``xs`` (each (n, ...), n >= 2).

    Random pairs pair item i with item (i + n/2) mod n (no item meets its own partner; pass items
    in random order), so both distances are over the same items. Latents are one sample from each
    unimodal posterior.
    """
    if len(xs) != 2 or len(xs[0]) < 2:
        raise ValueError("expert_alignment needs two modalities and at least two paired items")
    n = len(xs[0])
    with eval_mode(model):
        posts = [model.unimodal_posterior(m, x.to(model.device)) for m, x in enumerate(xs)]
        other = (torch.arange(n, device=model.device) + n // 2) % n
        paired = (posts[0][0] - posts[1][0]).abs().sum(-1).mean().item()
        unpaired = (posts[0][0] - posts[1][0][other]).abs().sum(-1).mean().item()
        z = [model.posterior_sample(loc, scale, generator) for loc, scale in posts]
        names = [mod.name for mod in model.mods]
        spread = {}
        for m, n_ in ((0, 1), (1, 0)):
            cross, own = _spread(model.mods[n_].decode(z[m])), _spread(model.mods[n_].decode(z[n_]))
            spread[f"{names[m]}_to_{names[n_]}"] = {"cross": cross, "own": own,
                                                    "ratio": cross / own if own > 0 else None}
    return {"paired_distance": paired, "random_distance": unpaired,
            "distance_ratio": paired / unpaired if unpaired > 0 else None,
            "cross_decode_spread": spread, "n": n}
