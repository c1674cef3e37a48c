"""Objectives as plain functions of per-sample log importance weights.

Every estimator takes ``lw`` of shape (S*K, ...) -- log p(z) + sum_m lambda_m log p(x_m|z) - log q(z|.)
for S*K samples (S strata, K samples each) -- and reduces dimension 0. Stratified mixture samples
(MMVAE) are equally weighted, so the same log-mean-exp serves them (Shi et al. 2019, eq. 5).

Names follow the paper: ELBO, IWAE, CUBO (chi upper bound, n=2), DReG, and the contrastive
objective of eq. (4) and eq. (14).
"""
from __future__ import annotations

import math

import torch


def log_mean_exp(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/n) sum_i exp(x_i), stable."""
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


def elbo(lw: torch.Tensor) -> torch.Tensor:
    """ELBO estimate: the mean of the log weights."""
    return lw.mean(0)


def iwae(lw: torch.Tensor) -> torch.Tensor:
    """IWAE_K: log (1/K) sum_k w_k; equals the ELBO estimate when K = 1."""
    return log_mean_exp(lw, 0)


def cubo(lw: torch.Tensor) -> torch.Tensor:
    """CUBO_2: 1/2 log (1/K) sum_k w_k^2, an upper bound on log p (>= IWAE on the same samples)."""
    return 0.5 * log_mean_exp(2.0 * lw, 0)


ESTIMATORS = {"elbo": elbo, "iwae": iwae, "cubo": cubo}


def estimate(lw: torch.Tensor, estimator: str) -> torch.Tensor:
    """Apply the named estimator (elbo, iwae, cubo) to log weights."""
    try:
        return ESTIMATORS[estimator](lw)
    except KeyError:
        raise ValueError(f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}") from None


def looser(lw: torch.Tensor, strata: int, estimator: str = "iwae") -> torch.Tensor:
    """Shi et al. (2019)'s looser stratified bound: the estimator within each stratum, averaged over strata.

    ``lw`` (S*K, ...) is stratum-major (MMVAE: K samples from each expert). For IWAE this is
    below the estimate over all S*K samples (Jensen), but every expert gets its own normalised
    weights. Over all samples at once, an expert whose samples score far below another's gets
    almost no weight, so its encoder only learns to keep away from the other expert's samples:
    on CUB the caption expert collapses that way while the image expert takes all the gradient.
    """
    if lw.shape[0] % strata:
        raise ValueError(f"{lw.shape[0]} samples do not split into {strata} equal strata")
    by_stratum = lw.reshape(strata, lw.shape[0] // strata, *lw.shape[1:]).transpose(0, 1)
    return estimate(by_stratum, estimator).mean(0)


def dreg(lw: torch.Tensor, zs: list[torch.Tensor], looser: bool = False) -> torch.Tensor:
    """DReG surrogate for IWAE (Tucker et al. 2019), as in Shi et al. 2019's m_dreg / m_dreg_looser.

    ``lw`` must be computed with the posterior parameters detached inside log q; ``zs`` are the
    reparameterised samples, one (K, B, L) tensor per stratum, in the order of ``lw``'s strata.
    ``looser``: the weights are normalised within each stratum and the strata averaged, the DReG
    estimator of the looser stratified bound (:func:`looser`); otherwise over all samples at once.
    Returns a per-item surrogate whose gradient is the doubly-reparameterised IWAE gradient
    (its value is not the IWAE estimate).
    """
    S = len(zs)
    by_stratum = lw.reshape(S, lw.shape[0] // S, *lw.shape[1:])
    with torch.no_grad():
        wt = torch.softmax(by_stratum, 1) if looser else torch.softmax(lw, 0).view_as(by_stratum)
    if torch.is_grad_enabled():
        for s, z in enumerate(zs):
            if z.requires_grad:
                z.register_hook(lambda g, w=wt[s].unsqueeze(-1): w * g)
    per_stratum = (wt * by_stratum).sum(1)
    return per_stratum.mean(0) if looser else per_stratum.sum(0)


def contrastive(log_p: torch.Tensor, log_p_neg_x: torch.Tensor, log_p_neg_y: torch.Tensor,
                gamma: float = 2.0) -> torch.Tensor:
    """Eq. (4), per pair, to be minimised.

    L(x,y) = -gamma log p(x,y) + 1/2 [log sum_i p(x'_i, y) + log sum_i p(x, y'_i)]

    ``log_p`` (B,) estimates term 1; ``log_p_neg_x`` and ``log_p_neg_y`` (B, N) are the estimates
    of log p(x'_i, y) and log p(x, y'_i) for the N negatives of each pair.
    """
    term2 = 0.5 * (torch.logsumexp(log_p_neg_x, -1) + torch.logsumexp(log_p_neg_y, -1))
    return -gamma * log_p + term2


def contrastive_multi(log_p: torch.Tensor, log_p_neg: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Eq. (14) for M modalities: -gamma log p(x_1:M) + log sum_n p(x_1^{J_1n}, ..., x_M^{J_Mn}).

    ``log_p`` (B,), ``log_p_neg`` (B, N): estimates for N negatives, each built from one random item
    per modality (the index matrix J).
    """
    return -gamma * log_p + torch.logsumexp(log_p_neg, -1)
