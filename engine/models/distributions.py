"""Posterior and prior distributions (DISTRIBUTIONS), products and mixtures of experts, and likelihoods.

Everything works on explicit (loc, scale) tensors that broadcast over leading sample and batch
dimensions, so a model can evaluate any posterior or decoder output at any other item's data by
indexing -- the trick that lets negatives reuse work already done.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from engine.models.pairwise_l1 import pairwise_l1

LOG2 = math.log(2.0)
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
DISTRIBUTIONS = ("laplace", "normal")


def noise(dist: str, shape: tuple[int, ...], *, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard noise for reparameterised sampling: N(0,1) for normal, U(-1/2, 1/2) for laplace."""
    if dist == "normal":
        return torch.randn(shape, device=device, generator=generator)
    if dist == "laplace":
        return torch.rand(shape, device=device, generator=generator) - 0.5
    raise ValueError(f"unknown distribution {dist!r}; choose from {DISTRIBUTIONS}")


def rsample(dist: str, loc: torch.Tensor, scale: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Reparameterised sample from standard noise ``eps`` (see :func:`noise`)."""
    if dist == "normal":
        return loc + scale * eps
    u = eps.clamp(-0.5 + 1e-6, 0.5 - 1e-6)
    return loc - scale * torch.sign(u) * torch.log1p(-2.0 * u.abs())


def log_prob(dist: str, loc: torch.Tensor, scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Elementwise log-density (no reduction) of a Laplace or Normal."""
    if dist == "laplace":
        return -(x - loc).abs() / scale - torch.log(2.0 * scale)
    if dist == "normal":
        return -0.5 * ((x - loc) / scale) ** 2 - torch.log(scale) - HALF_LOG_2PI
    raise ValueError(f"unknown distribution {dist!r}; choose from {DISTRIBUTIONS}")


def pairwise_log_prob(dist: str, loc: torch.Tensor, scale: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(A, N) log-density of posterior j (``loc``, ``scale``: (N, L)) at latent i (``z``: (A, L)),
    summed over L, without an (A, N, L) temporary for Laplace (a weighted all-pairs L1 kernel)."""
    if dist == "laplace":
        return -pairwise_l1(z, loc, scale.reciprocal()) - torch.log(2.0 * scale).sum(-1)
    return log_prob(dist, loc, scale, z.unsqueeze(1)).sum(-1)


def combine_noise(dist: str, parts: list[torch.Tensor]) -> torch.Tensor:
    """Standard noise of a pair from its items' standard noises (same shape and distribution).

    Normal: the sum over sqrt(n). Laplace (uniform noise on [-1/2, 1/2)): the sum mod 1, recentred.
    """
    total = sum(parts)
    if dist == "normal":
        return total * (1.0 / math.sqrt(len(parts)))
    return torch.remainder(total + len(parts) / 2, 1.0) - 0.5


def kl_normal(loc_q: torch.Tensor, scale_q: torch.Tensor, loc_p: torch.Tensor, scale_p: torch.Tensor) -> torch.Tensor:
    """KL(q || p) between diagonal Normals, summed over the last dimension."""
    var_ratio = (scale_q / scale_p) ** 2
    t = ((loc_q - loc_p) / scale_p) ** 2
    return 0.5 * (var_ratio + t - 1.0 - torch.log(var_ratio)).sum(-1)


def product_of_normals(locs: torch.Tensor, scales: torch.Tensor, mask: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Product of Gaussian experts along dim 0 (Wu & Goodman 2018): precision-weighted mean.

    ``mask`` (E, ...) with 1 for present experts and 0 for absent ones, broadcastable to ``locs``.
    """
    prec = scales.pow(-2)
    if mask is not None:
        prec = prec * mask
    total = prec.sum(0)
    loc = (locs * prec).sum(0) / total
    return loc, total.rsqrt()


def mixture_log_prob(component_log_probs: torch.Tensor) -> torch.Tensor:
    """Log-density of an equally weighted mixture from its components' log-densities on dim 0."""
    return torch.logsumexp(component_log_probs, 0) - math.log(component_log_probs.shape[0])


def posterior_scale(dist: str, raw: torch.Tensor) -> torch.Tensor:
    """Map an encoder's raw output to a positive scale.

    Laplace (MMVAE) uses Shi et al. 2019's softmax * L parameterisation; Normal uses softplus.
    """
    if dist == "laplace":
        return F.softmax(raw, -1) * raw.shape[-1] + 1e-6
    return F.softplus(raw) + 1e-6


class _L1(torch.autograd.Function):
    """sum_d |x - loc| over the last ``k`` dims, with broadcasting and a lean backward.

    Autograd's chain (sub, abs, sum) keeps several full-size temporaries; this makes one in the
    forward (abs in place) and one in the backward (sign and scale in place), and reduces it to
    each input's shape. Laplace modalities score their K decodes per item with a batched cdist
    (``LaplaceModality.grouped_log_likelihood``); this is the general broadcasting path.
    """

    @staticmethod
    def forward(ctx, loc, x, k):
        ctx.save_for_backward(loc, x)
        ctx.k = k
        return torch.sub(x, loc).abs_().flatten(-k).sum(-1)

    @staticmethod
    def backward(ctx, g):
        loc, x = ctx.saved_tensors
        g = g.reshape(*g.shape, *([1] * ctx.k))
        s = torch.sub(loc, x).sign_().mul_(g)
        g_loc = s.sum_to_size(loc.shape) if ctx.needs_input_grad[0] else None
        g_x = s.sum_to_size(x.shape).neg() if ctx.needs_input_grad[1] else None
        return g_loc, g_x, None


def l1_distance(loc: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
    """sum over the last k dims of |x - loc| (broadcasting), for Laplace likelihoods."""
    return _L1.apply(loc, x, k)
