"""A variant's loss for one batch: the model's log weights fed to the objectives.

Baselines minimise minus their usual objective. Contrastive variants (cI-, cC-) minimise eq. (4):
term 1 is the usual objective with its joint term estimated by IWAE; term 2 scores N in-batch
negatives per pair by IWAE (cI-) or CUBO (cC-). gamma = inf recovers the baseline.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine import objectives as O
from engine.config import ObjectiveConfig
from engine.models.base import MultimodalVAE
from engine.registry import BASE_ESTIMATOR


@dataclass
class LossOutput:
    """One batch's loss and its terms (batch means)."""

    loss: torch.Tensor             # scalar to minimise
    term1: torch.Tensor            # term 1: the usual objective (its joint term by IWAE when contrastive)
    term2: torch.Tensor | None     # term 2: 1/2 [log sum p(x',y) + log sum p(x,y')]; None for baselines
    elbo: torch.Tensor             # joint ELBO estimate from the same samples (a diagnostic)
    per_item: torch.Tensor         # (B,) loss of each pair

    def terms(self) -> dict[str, float]:
        d = {"loss": self.loss.item(), "term1": self.term1.item(), "elbo": self.elbo.item()}
        if self.term2 is not None:
            d["term2"] = self.term2.item()
        return d


def sample_negatives(batch_size: int, N: int, generator: torch.Generator | None = None,
                     device=None) -> torch.Tensor:
    """(B, N) in-batch negative indices, for each item N distinct others (uniform, no replacement).

    Drawn on the CPU generator (reproducible on any device), then moved to ``device``.
    """
    if batch_size < 2:
        raise ValueError("contrastive objectives need a batch of at least 2 pairs")
    N = min(N, batch_size - 1)
    scores = torch.rand(batch_size, batch_size, generator=generator)
    scores.fill_diagonal_(2.0)
    return scores.argsort(-1)[:, :N].to(device)


def negative_index(negx: torch.Tensor, negy: torch.Tensor) -> torch.Tensor:
    """The (2, 2*B*N) pair index J: first (x'_i, y) for every negative, then (x, y'_i)."""
    B, N = negx.shape
    own = torch.arange(B, device=negx.device).repeat_interleave(N)
    return torch.stack([torch.cat([negx.reshape(-1), own]), torch.cat([own, negy.reshape(-1)])])


def variant_loss(model: MultimodalVAE, xs: list[torch.Tensor], family: str, obj: ObjectiveConfig,
                 generator: torch.Generator | None = None, noise: list[torch.Tensor] | None = None,
                 neg_noise: torch.Tensor | None = None) -> LossOutput:
    """Eq. (4) (or the baseline objective) for one batch, as a batch mean.

    ``noise`` and ``neg_noise`` fix the sampling noise of the positives and of the negative pairs
    (MVAE, JMVAE); the tests use them to compare against a per-pair reference.
    """
    enc = model(xs, obj.K, noise)
    contrastive = obj.contrastive is not None and not math.isinf(obj.gamma)
    est1 = "dreg" if obj.dreg else ("iwae" if contrastive else BASE_ESTIMATOR[family])
    term1 = model.base_objective(enc, est1)
    with torch.no_grad():
        elbo = O.elbo(model.log_weights(enc)).mean()
    if not contrastive:
        return LossOutput(-term1.mean(), term1.mean().detach(), None, elbo, -term1.detach())
    B = enc.batch_size
    M = len(xs)
    if M == 2:
        negx = sample_negatives(B, obj.N, generator, model.device)
        negy = sample_negatives(B, obj.N, generator, model.device)
        lw = model.log_weights(enc, negative_index(negx, negy), neg_noise)
        e = O.estimate(lw, obj.contrastive).view(2, B, negx.shape[1])
        per_item = O.contrastive(term1, e[0], e[1], obj.gamma)
        term2 = 0.5 * (torch.logsumexp(e[0], -1) + torch.logsumexp(e[1], -1))
    else:
        J = torch.randint(0, B, (M, B * obj.N), generator=generator).to(model.device)
        e = O.estimate(model.log_weights(enc, J, neg_noise), obj.contrastive).view(B, obj.N)
        per_item = O.contrastive_multi(term1, e, obj.gamma)
        term2 = torch.logsumexp(e, -1)
    return LossOutput(per_item.mean(), term1.mean().detach(), term2.mean().detach(), elbo, per_item.detach())
