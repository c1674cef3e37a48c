"""MVAE: a product of Gaussian experts with a prior expert (Wu & Goodman 2018).

q(z | x_S) = p(z) prod_{m in S} q~(z | x_m) for any subset S. The usual objective is the
ELBO of the joint plus the ELBO of each single modality (sub-sampled training). Negative pairs
need no new encodes: the experts of items i and j are combined by indexing.
"""
from __future__ import annotations

import torch

from engine.models import distributions as D
from engine.models.base import Encoded, MultimodalVAE, take


class MVAE(MultimodalVAE):
    posterior_family = "normal"

    def _poe(self, locs: list[torch.Tensor], scales: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        prior_loc = self.prior_loc.expand_as(locs[0])
        prior_scale = self.prior_scale().expand_as(locs[0])
        return D.product_of_normals(torch.stack([prior_loc, *locs]), torch.stack([prior_scale, *scales]))

    def forward(self, xs, K=1, noise=None) -> Encoded:
        posts = [self.encode(m, x) for m, x in enumerate(xs)]
        locs, scales = [p[0] for p in posts], [p[1] for p in posts]
        loc, scale = self._poe(locs, scales)
        if noise is None:  # one draw for the joint posterior, one for each unimodal subset
            noise = [self.noise((K, *loc.shape)) for _ in range(len(xs) + 1)]
        lw, z, params = self._joint_lw(xs, loc, scale, noise[0], True)
        return Encoded(list(xs), K, locs, scales, list(noise), [z], [params], {"lw": lw})

    def log_weights(self, enc, J=None, noise=None, scaled=True, detach_q=False):
        """(K, P) log weights under the PoE posterior of each pair; negatives batched in one decode."""
        if J is None and scaled and noise is None:
            return enc.extra["lw"]
        locs = [take(l, None if J is None else J[m]) for m, l in enumerate(enc.loc)]
        scales = [take(s, None if J is None else J[m]) for m, s in enumerate(enc.scale)]
        xs = [take(x, None if J is None else J[m]) for m, x in enumerate(enc.xs)]
        loc, scale = self._poe(locs, scales)
        eps = noise if noise is not None else (enc.noise[0] if J is None else self.noise((enc.K, *loc.shape)))
        return self._joint_lw(xs, loc, scale, eps, scaled)[0]

    def unimodal_posterior(self, m, x):
        loc, scale = self.encode(m, x)
        return self._poe([loc], [scale])

    def joint_posterior(self, xs):
        posts = [self.encode(m, x) for m, x in enumerate(xs)]
        return self._poe([p[0] for p in posts], [p[1] for p in posts])

    def noise_streams(self) -> int:
        return len(self.mods) + 1

    def objective_terms(self, enc):
        """Joint term plus each unimodal term (Wu & Goodman's sub-sampled ELBO)."""
        terms = [self.log_weights(enc)]
        for m, x in enumerate(enc.xs):
            loc, scale = self._poe([enc.loc[m]], [enc.scale[m]])
            z = D.rsample(self.posterior_family, loc, scale, enc.noise[1 + m])
            terms.append(self.log_prior(z) + self.loglik(m, self.mods[m].decode(z), x)
                         - D.log_prob(self.posterior_family, loc, scale, z).sum(-1))
        return terms, 0.0
