"""JMVAE: a joint encoder q(z|x,y) plus unimodal encoders tied to it (Suzuki et al. 2016).

The usual objective is JMVAE-kl: ELBO(x,y) - alpha sum_m KL(q(z|x,y) || q(z|x_m)).
Negative pairs go through the joint encoder and decoders in one batched call.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.models import distributions as D
from engine.models.base import Encoded, MultimodalVAE, take
from engine.models.modalities import MNIST, SVHN


class MnistSvhnJointEncoder(nn.Module):
    """Table 4a: MNIST padded to 32x32 and repeated to 3 channels, beside SVHN (3x32x64)."""

    def __init__(self, latent_dim: int):
        super().__init__()
        L = latent_dim
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(128, 128, (1, 4), (1, 2), (0, 1)), nn.ReLU(),
            nn.Conv2d(128, 2 * L, 4, 1, 0), nn.Flatten())

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        mnist = F.pad(xs[0], (2, 2, 2, 2)).expand(-1, 3, -1, -1)
        return self.net(torch.cat([mnist, xs[1]], -1))


class ConcatJointEncoder(nn.Module):
    """Generic joint encoder: a fresh copy of each unimodal encoder, concatenated, then an MLP.

    Used for CUB in place of Table 4b's image-shaped input; it sees the same information.
    """

    def __init__(self, modalities, latent_dim: int, hidden: int = 512):
        super().__init__()
        self.trunks = nn.ModuleList(_encoder_only(m) for m in modalities)
        self.head = nn.Sequential(nn.Linear(2 * latent_dim * len(modalities), hidden), nn.ReLU(),
                                  nn.Linear(hidden, 2 * latent_dim))

    def forward(self, xs):
        return self.head(torch.cat([t.encoder(x).flatten(1) for t, x in zip(self.trunks, xs)], -1))


def _encoder_only(m):
    """A fresh, untied copy of modality m with its decoder dropped (only the encoder is used)."""
    trunk = type(m)(**_ctor_args(m))
    trunk.decoder = nn.Identity()
    return trunk


def _ctor_args(m) -> dict:
    args = {"latent_dim": m.latent_dim}
    if hasattr(m, "vocab_size"):
        args["vocab_size"] = m.vocab_size
    if m.name == "image":
        args["feature_dim"] = m.n_dims
    return args


class JMVAE(MultimodalVAE):
    posterior_family = "normal"

    def __init__(self, modalities, latent_dim, learn_prior=False, alpha: float = 0.01):
        super().__init__(modalities, latent_dim, learn_prior)
        self.alpha = alpha
        if len(modalities) == 2 and isinstance(modalities[0], MNIST) and isinstance(modalities[1], SVHN):
            self.joint_encoder = MnistSvhnJointEncoder(latent_dim)
        else:
            self.joint_encoder = ConcatJointEncoder(modalities, latent_dim)

    @classmethod
    def from_settings(cls, modalities, latent_dim, learn_prior=False, alpha=0.01) -> "JMVAE":
        return cls(modalities, latent_dim, learn_prior, alpha)

    def joint_posterior(self, xs):
        h = self.joint_encoder(list(xs))
        L = self.latent_dim
        return h[..., :L], D.posterior_scale(self.posterior_family, h[..., L:])

    def forward(self, xs, K=1, noise=None) -> Encoded:
        posts = [self.encode(m, x) for m, x in enumerate(xs)]
        loc, scale = self.joint_posterior(xs)
        eps = noise[0] if noise is not None else self.noise((K, *loc.shape))
        lw, z, params = self._joint_lw(xs, loc, scale, eps, True)
        return Encoded(list(xs), K, [p[0] for p in posts], [p[1] for p in posts], [eps], [z], [params],
                       {"lw": lw, "joint": (loc, scale)})

    def log_weights(self, enc, J=None, noise=None, scaled=True, detach_q=False):
        """(K, P) log weights under q(z | x_i, y_j); negative pairs encoded in one call."""
        if J is None and scaled and noise is None:
            return enc.extra["lw"]
        xs = [take(x, None if J is None else J[m]) for m, x in enumerate(enc.xs)]
        loc, scale = enc.extra["joint"] if J is None else self.joint_posterior(xs)
        eps = noise if noise is not None else (enc.noise[0] if J is None else self.noise((enc.K, *loc.shape)))
        return self._joint_lw(xs, loc, scale, eps, scaled)[0]

    def objective_terms(self, enc):
        """JMVAE-kl: joint bound minus alpha * sum_m KL(q(z|x,y) || q(z|x_m))."""
        loc, scale = enc.extra["joint"]
        kl = sum(D.kl_normal(loc, scale, l, s) for l, s in zip(enc.loc, enc.scale))
        return [self.log_weights(enc)], -self.alpha * kl
