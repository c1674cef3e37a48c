"""A variant's loss for one batch: the model's log weights fed to the objectives.

Baselines minimise minus their usual objective. Contrastive variants (cI-, cC-) minimise eq. (4):
term 1 is the usual objective with its joint term estimated by IWAE (for MMVAE optionally by the
looser stratified bound, ``objectives.looser``); term 2 scores N in-batch
negatives per pair by IWAE (cI-) or CUBO (cC-). gamma = inf recovers the baseline.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from engine import objectives as O
from engine.config import ObjectiveConfig
from engine.errors import ConfigError
from engine.models.base import MultimodalVAE


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
    """(B, N) in-batch negative indices: for each item N distinct others, uniformly at random.

    Each column is a fixed-point-free permutation of the batch (sigma_n(b) = pi[pi^-1[b] + s_n],
    with a random permutation pi and distinct random shifts s_n), so every item is used exactly
    once per column: MMVAE then scores the negatives in item-major layout, reusing each item's
    decodes without gathering them. Drawn on the CPU generator, then moved to ``device``.
    """
    if batch_size < 2:
        raise ValueError("contrastive objectives need a batch of at least 2 pairs")
    N = min(N, batch_size - 1)
    pi = torch.randperm(batch_size, generator=generator)
    shifts = torch.randperm(batch_size - 1, generator=generator)[:N] + 1
    pos = torch.empty_like(pi)
    pos[pi] = torch.arange(batch_size)
    return pi[(pos.unsqueeze(1) + shifts) % batch_size].to(device)


def negative_index(negx: torch.Tensor, negy: torch.Tensor) -> torch.Tensor:
    """The (2, 2*N*B) pair index J, negative-major: N blocks of (x'_i, y) then N blocks of (x, y'_i).

    Block n of the first half pairs x[negx[b, n]] with y[b] for every b (pair n*B + b).
    """
    B, N = negx.shape
    own = torch.arange(B, device=negx.device).repeat(N)
    return torch.stack([torch.cat([negx.T.reshape(-1), own]), torch.cat([own, negy.T.reshape(-1)])])


def _join_strata(chunks, sizes: list[int]) -> torch.Tensor:
    """Log weights of K-chunks, each (S*k, ...) stratum-major, joined into one stratum-major (S*K, ...)."""
    by_stratum = [c.reshape(c.shape[0] // k, k, *c.shape[1:]) for c, k in zip(chunks, sizes)]
    return torch.cat(by_stratum, 1).flatten(0, 1)


def variant_loss(model: MultimodalVAE, xs: list[torch.Tensor], obj: ObjectiveConfig,
                 generator: torch.Generator | None = None, noise: list[torch.Tensor] | None = None,
                 neg_noise: torch.Tensor | None = None, k_chunk: int | None = None,
                 forward=None) -> LossOutput:
    """Eq. (4) (or the baseline objective) for one batch, as a batch mean.

    ``noise`` and ``neg_noise`` fix the sampling noise of the positives and of the negative pairs
    (MVAE, JMVAE); the tests use them to compare against a per-pair reference.
    ``k_chunk`` evaluates the K samples in chunks under activation checkpointing, so peak memory
    is that of one chunk while the loss and gradients equal the unchunked ones (the estimators
    only see the concatenated log weights). ``forward`` replaces ``model`` for the encode/decode
    call (a DistributedDataParallel wrapper).
    """
    B, M, K = xs[0].shape[0], len(xs), obj.K
    contrastive = obj.contrastive is not None and not math.isinf(obj.gamma)
    est1 = "dreg" if obj.dreg else ("iwae" if contrastive else model.default_estimator)
    chunked = k_chunk is not None and k_chunk < K
    if chunked and est1 == "dreg":
        raise ConfigError("--k-chunk cannot be combined with DReG gradients")
    noise = noise if noise is not None else model.draw_noise(B, K)
    J = negx = None
    if contrastive:
        if M == 2:
            negx = sample_negatives(B, obj.N, generator, model.device)
            J = negative_index(negx, sample_negatives(B, obj.N, generator, model.device))
        else:
            J = torch.randint(0, B, (M, B * obj.N), generator=generator).to(model.device)
        if neg_noise is None:
            neg_noise = model.draw_pair_noise(J.shape[1], K)
    fwd = forward or model

    def pieces(noise_c, neg_c):
        enc = fwd(xs, noise_c[0].shape[0], noise_c)
        if est1 == "dreg":
            terms, extra = [], model.base_objective(enc, "dreg", looser=obj.looser)
        else:
            terms, extra = model.objective_terms(enc)
        neg = model.log_weights(enc, J, neg_c) if J is not None else None
        joint = model.log_weights(enc).detach()
        return terms, extra, neg, joint

    if not chunked:
        terms, extra, neg, joint = pieces(noise, neg_noise)
    else:
        sizes = [min(k_chunk, K - i) for i in range(0, K, k_chunk)]
        slices = [slice(i, i + k) for i, k in zip(range(0, K, k_chunk), sizes)]
        outs = [checkpoint(pieces, [n[sl] for n in noise], None if neg_noise is None else neg_noise[sl],
                           use_reentrant=False) for sl in slices]
        terms = [_join_strata(t, sizes) for t in zip(*(o[0] for o in outs))]
        extra = outs[0][1]
        neg = None if J is None else torch.cat([o[2] for o in outs], 0)
        joint = torch.cat([o[3] for o in outs], 0)
    def joint_estimate(t):
        return O.looser(t, M, est1) if obj.looser else O.estimate(t, est1)

    term1 = sum(joint_estimate(t) for t in terms) + extra if terms else extra
    elbo = O.elbo(joint).mean()
    if not contrastive:
        return LossOutput(-term1.mean(), term1.mean().detach(), None, elbo, -term1.detach())
    if M == 2:
        e = O.estimate(neg, obj.contrastive).view(2, negx.shape[1], B).transpose(1, 2)
        per_item = O.contrastive(term1, e[0], e[1], obj.gamma)
        term2 = 0.5 * (torch.logsumexp(e[0], -1) + torch.logsumexp(e[1], -1))
    else:
        e = O.estimate(neg, obj.contrastive).view(B, obj.N)
        per_item = O.contrastive_multi(term1, e, obj.gamma)
        term2 = torch.logsumexp(e, -1)
    return LossOutput(per_item.mean(), term1.mean().detach(), term2.mean().detach(), elbo, per_item.detach())
