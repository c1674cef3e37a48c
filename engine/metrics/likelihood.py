"""Importance-sampled log-likelihoods (paper Appendix G, Tables 5-7; Shi et al. 2019).

Every number here estimates a marginal log-likelihood with the IWAE estimator

    log p(x_T) ~= log 1/S' sum_s p(z_s) prod_{n in T} p(x_n | z_s) / q(z_s),   z_s ~ q,

for a set T of target modalities and a proposal q; only the proposal changes between columns:

- ``joint``            log p(x_m, x_n): T = all modalities, q = q(z | x_m, x_n).
- ``m_given_joint``    log p(x_m | x_m, x_n): T = {m}, q = q(z | x_m, x_n).
- ``m_given_m``        log p(x_m | x_m): T = {m}, q = q(z | x_m).
- ``m_given_n``        log p(x_m | x_n): T = {m}, q = q(z | x_n) (a cross proposal, so a loose bound).

q(z | x_m, x_n) is the model's joint posterior; where that is a mixture (MMVAE) it is sampled
stratified, S draws from each unimodal posterior, and scored by the mixture density, so S' = M*S
(as Shi et al. 2019). Likelihoods are unscaled (scaled=False): no modality weighting.
The S samples are processed ``k_chunk`` at a time and combined with logsumexp, so memory is
bounded and the result equals the unchunked estimate up to float error (the noise is drawn once).
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from engine.models import distributions as D


def joint_proposal(model, xs: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Components of q(z | x_1..M): one (loc, scale), or the unimodal posteriors of a mixture (MMVAE)."""
    if model.mixture_posterior:
        return [model.unimodal_posterior(m, x) for m, x in enumerate(xs)]
    return [model.joint_posterior(xs)]


@torch.no_grad()
def iwae_targets(model, xs: list[torch.Tensor], components: list[tuple[torch.Tensor, torch.Tensor]],
                 targets: list[tuple[int, ...]], S: int, k_chunk: int | None = None,
                 generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Per-item (B,) IWAE estimates of log p(x_T) for each target set T, all from the same samples.

    ``components`` define an equally weighted mixture proposal sampled stratified (S per component).
    """
    if S < 1:
        raise ValueError(f"S (importance samples) must be >= 1, got {S}")
    k_chunk = S if k_chunk is None else max(1, min(k_chunk, S))
    C = len(components)
    locs = torch.stack([c[0] for c in components])            # (C, B, L)
    scales = torch.stack([c[1] for c in components])
    noise = model.noise((C, S, *locs.shape[1:]), generator)   # drawn once: chunking does not change it
    needed = sorted({n for t in targets for n in t})
    acc = [torch.full(locs.shape[1:2], -math.inf, device=locs.device) for _ in targets]
    for start in range(0, S, k_chunk):
        dist = model.posterior_family
        z = D.rsample(dist, locs[:, None], scales[:, None], noise[:, start:start + k_chunk])  # (C,k,B,L)
        comp_lq = D.log_prob(dist, locs[:, None, None], scales[:, None, None], z[None]).sum(-1)
        lq = D.mixture_log_prob(comp_lq)                        # (C, k, B)
        base = model.log_prior(z) - lq
        ll = {n: model.loglik(n, model.mods[n].decode(z), xs[n], scaled=False) for n in needed}
        for i, t in enumerate(targets):
            lw = (base + sum(ll[n] for n in t)).flatten(0, 1)
            acc[i] = torch.logaddexp(acc[i], torch.logsumexp(lw, 0))
    return [a - math.log(C * S) for a in acc]


def estimator_names(names: tuple[str, ...]) -> list[str]:
    """Result keys, in the paper's column order per modality."""
    out = ["joint"]
    for a in names:
        out += [f"{a}_given_joint"] + [f"{a}_given_{b}" for b in names]
    return out


@torch.no_grad()
def log_likelihood_items(model, xs: list[torch.Tensor], S: int = 1000, k_chunk: int | None = 50,
                         generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Every estimator of the module docstring for one batch of pairs: name -> (B,) values."""
    names = tuple(mod.name for mod in model.mods)
    M = len(names)
    out: dict[str, torch.Tensor] = {}
    joint = iwae_targets(model, xs, joint_proposal(model, xs), [tuple(range(M))] + [(m,) for m in range(M)],
                         S, k_chunk, generator)
    out["joint"] = joint[0]
    for m, a in enumerate(names):
        out[f"{a}_given_joint"] = joint[1 + m]
    for b_idx, b in enumerate(names):
        uni = iwae_targets(model, xs, [model.unimodal_posterior(b_idx, xs[b_idx])], [(m,) for m in range(M)],
                           S, k_chunk, generator)
        for m, a in enumerate(names):
            out[f"{a}_given_{b}"] = uni[m]
    return {k: out[k] for k in estimator_names(names)}


@torch.no_grad()
def log_likelihoods(model, dataset, idx: torch.Tensor, S: int = 1000, k_chunk: int | None = 50,
                    batch_size: int = 32, generator: torch.Generator | None = None,
                    progress: bool = False) -> dict[str, float]:
    """Means over the pairs ``idx`` of ``dataset`` (a PairedDataset) of every estimator."""
    sums: dict[str, float] = {}
    for chunk in tqdm(idx.split(batch_size), disable=not progress, desc="log-likelihoods", unit="batch"):
        xs, _ = dataset.batch(chunk)
        items = log_likelihood_items(model, [x.to(model.device) for x in xs], S, k_chunk, generator)
        for k, v in items.items():
            sums[k] = sums.get(k, 0.0) + float(v.sum())
    n = max(len(idx), 1)
    return {k: v / n for k, v in sums.items()}


__all__ = ["joint_proposal", "iwae_targets", "log_likelihood_items", "log_likelihoods", "estimator_names"]
