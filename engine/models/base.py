"""The one interface the objectives need, shared by MMVAE, MVAE and JMVAE.

A model answers, for a batch of M-modal items and K samples:
- ``forward(xs, K)``: encode, sample and decode once; the returned :class:`Encoded` is reused.
- ``log_weights(enc, J)``: per-sample log importance weights of shape (S*K, P) for the P pairs
  whose m-th member is item ``J[m, p]`` of modality m (J=None: the positive pairs, J = diag).
  log w = log p(z) + sum_m lambda_m log p(x_m | z) - log q(z | .)
- ``unimodal_log_weights(x, m, K)``: (K, B) weights for log p(x_m) through q(z | x_m).
- ``base_objective(enc, estimator)``: the model's usual objective per item (to maximise).
Capabilities are class attributes (``mixture_posterior``, ``default_estimator``, ``supports_dreg``,
``supports_looser``, ``has_pairwise_kernel``) and noise builders (``draw_noise``, ``draw_pair_noise``,
``forward_noise``, ``pairs_noise``), so nothing else in the engine knows how a model factorises its
posterior or checks a model's class.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from engine import objectives as O
from engine.errors import ConfigError
from engine.models import distributions as D
from engine.models.modalities import Modality, likelihood_scaling


@dataclass
class Encoded:
    """One forward pass over a batch: posterior parameters, noise, samples and decodes."""

    xs: list[torch.Tensor]
    K: int
    loc: list[torch.Tensor]                 # per modality (B, L): unimodal posterior / expert
    scale: list[torch.Tensor]
    noise: list[torch.Tensor]               # per stratum (K, B, L)
    z: list[torch.Tensor]                   # per stratum (K, B, L)
    params: list[list[torch.Tensor]]        # params[s][n]: decode of stratum s into modality n
    extra: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.xs[0].shape[0]


def take(t: torch.Tensor, idx: torch.Tensor | None, dim: int = 0) -> torch.Tensor:
    """Index ``t`` along ``dim`` (no copy when idx is None)."""
    return t if idx is None else t.index_select(dim, idx)


class MultimodalVAE(nn.Module):
    """Shared parts: modalities, prior, likelihood scaling, generation helpers, capabilities."""

    posterior_family = "normal"  # distribution of posterior and prior (distributions.DISTRIBUTIONS)
    # q(z | x_1..M) is a mixture of the unimodal posteriors: no single joint posterior, log weights
    # stratified (one stratum per modality), new pairs re-index the strata's samples
    mixture_posterior = False
    default_estimator = "elbo"   # estimator of the usual objective when it is trained alone
    supports_dreg = False        # base_objective(enc, "dreg") exists
    supports_looser = False      # the looser stratified bound (objectives.looser) applies to its terms
    has_pairwise_kernel = False  # pairwise_log_weights: all pairs of two item sets, no per-pair decodes

    def __init__(self, modalities: list[Modality], latent_dim: int, learn_prior: bool = False):
        super().__init__()
        self.mods = nn.ModuleList(modalities)
        self.latent_dim = latent_dim
        self.register_buffer("prior_loc", torch.zeros(latent_dim))
        raw = torch.zeros(latent_dim)
        self.prior_raw = nn.Parameter(raw, requires_grad=learn_prior)
        self.register_buffer("llik_scaling", torch.tensor(likelihood_scaling(modalities)))

    @classmethod
    def from_settings(cls, modalities: list[Modality], latent_dim: int, learn_prior: bool = False,
                      alpha: float = 0.01) -> "MultimodalVAE":
        """The model from its ModelConfig settings; each family takes those it has (JMVAE: alpha)."""
        return cls(modalities, latent_dim, learn_prior)

    def set_likelihood_weights(self, weights: list[float]) -> "MultimodalVAE":
        """Replace Shi et al.'s likelihood scaling (``llik_scaling``, used in training) by ``weights``."""
        if len(weights) != self.n_modalities:
            raise ConfigError(f"likelihood_weights needs one weight per modality ({self.n_modalities}: "
                              f"{', '.join(m.name for m in self.mods)}), got {len(weights)}")
        self.llik_scaling.copy_(torch.tensor(weights, dtype=self.llik_scaling.dtype))
        return self

    def set_precision(self, precision: str) -> "MultimodalVAE":
        """Run every modality's networks in ``precision`` ('fp32' or 'bf16'); the rest stays fp32."""
        for mod in self.mods:
            mod.set_precision(precision)
        return self

    @property
    def n_modalities(self) -> int:
        return len(self.mods)

    @property
    def n_strata(self) -> int:
        """Row blocks of K in log weights: one per modality for a mixture, else one."""
        return self.n_modalities if self.mixture_posterior else 1

    @property
    def device(self) -> torch.device:
        return self.prior_loc.device

    def prior_scale(self) -> torch.Tensor:
        """Prior scale: 1 at initialisation; learnable when learn_prior (Shi et al. 2019)."""
        if self.posterior_family == "laplace":
            return torch.softmax(self.prior_raw, -1) * self.latent_dim
        return torch.exp(self.prior_raw)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return D.log_prob(self.posterior_family, self.prior_loc, self.prior_scale(), z).sum(-1)

    def encode(self, m: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unimodal posterior (or expert) parameters for modality m."""
        loc, raw = self.mods[m].encode(x)
        return loc, D.posterior_scale(self.posterior_family, raw)

    def noise(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        return D.noise(self.posterior_family, shape, device=self.device, generator=generator)

    def loglik(self, n: int, params: torch.Tensor, x: torch.Tensor, scaled: bool = True) -> torch.Tensor:
        ll = self.mods[n].log_likelihood(params, x)
        return ll * self.llik_scaling[n] if scaled else ll

    def grouped_loglik(self, n: int, params: torch.Tensor, x: torch.Tensor, scaled: bool = True) -> torch.Tensor:
        """(K, G, B) log p(x[g, b] | params[k, b]) for modality n (``Modality.grouped_log_likelihood``)."""
        ll = self.mods[n].grouped_log_likelihood(params, x)
        return ll * self.llik_scaling[n] if scaled else ll

    def decode_all(self, z: torch.Tensor) -> list[torch.Tensor]:
        return [mod.decode(z) for mod in self.mods]

    def _joint_lw(self, xs, loc, scale, eps, scaled):
        """Log weights under one (non-mixture) joint posterior: sample, decode every modality, score."""
        z = D.rsample(self.posterior_family, loc, scale, eps)
        lq = D.log_prob(self.posterior_family, loc, scale, z).sum(-1)
        params = self.decode_all(z)
        lpx = sum(self.loglik(n, params[n], xs[n], scaled) for n in range(len(xs)))
        return self.log_prior(z) + lpx - lq, z, params

    # ---- interface the objectives use -------------------------------------------------------
    def forward(self, xs: list[torch.Tensor], K: int = 1, noise: list[torch.Tensor] | None = None) -> Encoded:
        raise NotImplementedError

    def log_weights(self, enc: Encoded, J: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                    scaled: bool = True, detach_q: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def noise_streams(self) -> int:
        """How many (K, B, L) noise tensors ``forward`` consumes."""
        return 1

    def draw_noise(self, batch_size: int, K: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """All the noise one ``forward`` uses, drawn up front (so it can be split over K chunks)."""
        return [self.noise((K, batch_size, self.latent_dim), generator) for _ in range(self.noise_streams())]

    def draw_pair_noise(self, n_pairs: int, K: int, generator: torch.Generator | None = None
                        ) -> torch.Tensor | None:
        """The noise ``log_weights(enc, J, noise)`` takes for ``n_pairs`` new pairs, drawn up front:
        each pair's own joint posterior is sampled afresh."""
        return self.noise((K, n_pairs, self.latent_dim), generator)

    def pairs_noise(self, item_noise: list[torch.Tensor], J: torch.Tensor | None = None) -> torch.Tensor | None:
        """Noise of pairs J (None: the positive pairs) as a function of their items' noise
        ``item_noise[m]`` (K, B, L), so a pair's score does not depend on batching."""
        parts = [take(e, None if J is None else J[m], 1) for m, e in enumerate(item_noise)]
        return D.combine_noise(self.posterior_family, parts)

    def forward_noise(self, item_noise: list[torch.Tensor]) -> list[torch.Tensor]:
        """The noise list ``forward`` takes for positive pairs whose items carry ``item_noise``."""
        return [self.pairs_noise(item_noise)] * self.noise_streams()

    def objective_terms(self, enc: Encoded) -> tuple[list[torch.Tensor], torch.Tensor | float]:
        """The usual objective as log-weight tensors (each reduced by the estimator) plus a
        K-independent extra term; ``base_objective`` sums their estimates."""
        raise NotImplementedError

    def base_objective(self, enc: Encoded, estimator: str = "elbo") -> torch.Tensor:
        """The model's usual objective per item (to maximise), with the given estimator."""
        terms, extra = self.objective_terms(enc)
        return sum(O.estimate(t, estimator) for t in terms) + extra

    def unimodal_posterior(self, m: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x_m): the posterior the model uses when only modality m is observed."""
        return self.encode(m, x)

    def joint_posterior(self, xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """q(z | x_1..M) as one (loc, scale), or None where it is a mixture (``mixture_posterior``)."""
        raise NotImplementedError

    def unimodal_log_weights(self, x: torch.Tensor, m: int, K: int, noise: torch.Tensor | None = None,
                             scaled: bool = True) -> torch.Tensor:
        """(K, B) log weights for log p(x_m), with z ~ q(z | x_m) and modality m's decoder."""
        loc, scale = self.unimodal_posterior(m, x)
        eps = noise if noise is not None else self.noise((K, *loc.shape))
        z = D.rsample(self.posterior_family, loc, scale, eps)
        lq = D.log_prob(self.posterior_family, loc, scale, z).sum(-1)
        return self.log_prior(z) + self.loglik(m, self.mods[m].decode(z), x, scaled) - lq

    # ---- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = self.noise((n, self.latent_dim), generator)
        return D.rsample(self.posterior_family, self.prior_loc, self.prior_scale(), eps)

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Joint generation: z ~ p(z), decoded into every modality's mean."""
        z = self.sample_prior(n, generator)
        return [mod.mean(mod.decode(z)) for mod in self.mods]

    @torch.no_grad()
    def posterior_sample(self, loc: torch.Tensor, scale: torch.Tensor,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        return D.rsample(self.posterior_family, loc, scale, self.noise(loc.shape, generator))

    @torch.no_grad()
    def cross_generate(self, x: torch.Tensor, m: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Generate modality n from z ~ q(z | x_m) (m == n: reconstruction)."""
        z = self.posterior_sample(*self.unimodal_posterior(m, x), generator)
        return self.mods[n].mean(self.mods[n].decode(z))

    @torch.no_grad()
    def joint_generate(self, xs: list[torch.Tensor], n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Synergy generation: modality n from z ~ q(z | x_1..M)."""
        if self.mixture_posterior:
            raise ValueError(f"{type(self).__name__} has no single joint posterior (it is a mixture)")
        z = self.posterior_sample(*self.joint_posterior(xs), generator)
        return self.mods[n].mean(self.mods[n].decode(z))
