"""MMVAE: a mixture of unimodal experts q(z|x,y) = 1/M sum_m q(z|x_m) (Shi et al. 2019).

Training uses stratified sampling: K samples from each expert, each decoded into every
modality. Those decodes already hold what any negative pair (x_i, y_j) needs: z from q(z|x_i)
decoded into y-space is scored at y_j, and y_j's own sample decoded into x-space at x_i.
So ``log_weights`` for arbitrary pairs only re-indexes existing decodes.
"""
from __future__ import annotations

import torch

from engine import objectives as O
from engine.models import distributions as D
from engine.models.base import Encoded, MultimodalVAE, take


class MMVAE(MultimodalVAE):
    posterior_family = "laplace"
    mixture_posterior = True
    default_estimator = "iwae"
    supports_dreg = True
    supports_looser = True
    has_pairwise_kernel = True

    def forward(self, xs, K=1, noise=None) -> Encoded:
        posts = [self.encode(m, x) for m, x in enumerate(xs)]
        locs, scales = [p[0] for p in posts], [p[1] for p in posts]
        if noise is None:
            noise = [self.noise((K, *loc.shape)) for loc in locs]
        zs = [D.rsample(self.posterior_family, loc, s, e) for loc, s, e in zip(locs, scales, noise)]
        # One decoder call per target modality over all strata's K*B latents.
        z_all = torch.stack(zs)                                   # (M, K, B, L)
        decoded = [mod.decode(z_all) for mod in self.mods]        # [n] -> (M, K, B, ...)
        strata = [d.unbind(0) for d in decoded]
        params = [[strata[n][s] for n in range(len(self.mods))] for s in range(len(xs))]
        return Encoded(list(xs), K, locs, scales, list(noise), zs, params, {"decoded": decoded})

    def _logliks(self, enc: Encoded, scaled: bool) -> list[torch.Tensor]:
        """[n] -> (M, K, B) log p(x_n | z_s) for every stratum s, scored over the stacked decode in
        one call: the decoder output then gets its gradient in one piece, where per-stratum slices
        would each zero-fill a decoder-output-sized buffer in backward (the bird caption logits)."""
        key = ("ll", scaled)
        if key not in enc.extra:
            enc.extra[key] = [self.loglik(n, d, enc.xs[n], scaled) for n, d in enumerate(enc.extra["decoded"])]
        return enc.extra[key]

    def _cached(self, enc: Encoded, scaled: bool) -> dict:
        """Per-item terms every pair reuses: log p(z_s), log q(z_s|x_s), log p(x_s|z_s)."""
        key = ("items", scaled)
        if key not in enc.extra:
            lpz = [self.log_prior(z) for z in enc.z]
            lq_self = [D.log_prob(self.posterior_family, enc.loc[s], enc.scale[s], enc.z[s]).sum(-1)
                       for s in range(len(enc.z))]
            ll_self = [ll[s] for s, ll in enumerate(self._logliks(enc, scaled))]
            enc.extra[key] = (lpz, lq_self, ll_self)
        return enc.extra[key]

    def log_weights(self, enc, J=None, noise=None, scaled=True, detach_q=False):
        """(M*K, P) stratified log weights; stratum s draws z from q(z | x_s^{J_s})."""
        M = len(enc.xs)
        blocks = None if J is None or detach_q else _permutation_blocks(J, enc.batch_size)
        if blocks is not None:
            return self._log_weights_blocks(enc, blocks, scaled)
        if J is None and not detach_q:
            lpz, lq_self, ll_self = self._cached(enc, scaled)
        lws = []
        for s in range(M):
            js = None if J is None else J[s]
            z = take(enc.z[s], js, 1)
            if J is None and not detach_q:
                lp, own_lq, own_ll = lpz[s], lq_self[s], ll_self[s]
            else:
                lp = self.log_prior(z)
                loc, sc = take(enc.loc[s], js), take(enc.scale[s], js)
                if detach_q:
                    loc, sc = loc.detach(), sc.detach()
                own_lq = D.log_prob(self.posterior_family, loc, sc, z).sum(-1)
                own_ll = (self._logliks(enc, scaled)[s][s] if J is None else
                          self.loglik(s, take(enc.params[s][s], js, 1), take(enc.xs[s], js), scaled))
            lq, lpx = [], own_ll
            for m in range(M):
                if m == s:
                    lq.append(own_lq)
                    continue
                jm = None if J is None else J[m]
                loc, sc = take(enc.loc[m], jm), take(enc.scale[m], jm)
                if detach_q:
                    loc, sc = loc.detach(), sc.detach()
                lq.append(D.log_prob(self.posterior_family, loc, sc, z).sum(-1))
                lpx = lpx + (self._logliks(enc, scaled)[m][s] if J is None else
                             self.loglik(m, take(enc.params[s][m], js, 1), take(enc.xs[m], jm), scaled))
            lws.append(lp + lpx - D.mixture_log_prob(torch.stack(lq)))
        return torch.cat(lws, 0)

    def _log_weights_blocks(self, enc: Encoded, Jb: torch.Tensor, scaled: bool) -> torch.Tensor:
        """Fast path for pair sets made of whole-batch permutations (in-batch negatives).

        Jb is (M, nb, B) with every Jb[m, blk] a permutation of the batch. Each stratum is
        scored in item-major layout -- item i's own decodes against its partners' data, gathered
        by index -- so no decoder output is copied; only the (K, nb, B) results are reordered.
        """
        M, nb, B = Jb.shape
        lpz, lq_self, ll_self = self._cached(enc, scaled)
        lws = []
        for s in range(M):
            inv = Jb[s].argsort(-1)                               # position of item i in each block
            z = enc.z[s].unsqueeze(1)                             # (K, 1, B, L)
            lq, lpx = [lq_self[s].unsqueeze(1)], ll_self[s].unsqueeze(1)
            for m in range(M):
                if m == s:
                    continue
                partner = Jb[m].gather(-1, inv)                   # (nb, B): item i's partner in modality m
                lq.append(D.log_prob(self.posterior_family, enc.loc[m][partner], enc.scale[m][partner], z).sum(-1))
                lpx = lpx + self.grouped_loglik(m, enc.params[s][m], enc.xs[m][partner], scaled)
            lq = torch.stack(torch.broadcast_tensors(*lq))
            item_major = lpz[s].unsqueeze(1) + lpx - D.mixture_log_prob(lq)      # (K, nb, B)
            lws.append(item_major.gather(-1, Jb[s].expand(enc.K, nb, B)).reshape(enc.K, nb * B))
        return torch.cat(lws, 0)

    @torch.no_grad()
    def pairwise_log_weights(self, xs: list[torch.Tensor], noise: list[torch.Tensor], scaled: bool = True,
                             budget: int = 1 << 24) -> torch.Tensor:
        """(2K, n0, n1) stratified log weights of every pair (xs[0][i], xs[1][j]) of two modalities.

        Equals ``log_weights`` over all pairs of a forward pass with item noise ``noise`` (K, n_m, L),
        without materialising any pair's decode: stratum s draws z from q(z | x_s), decodes it once
        per item, and scores the other modality's items all at once
        (``Modality.pairwise_log_likelihood``), in chunks of latents sized so that no temporary
        holds more than ``budget`` floats.
        """
        if len(xs) != 2:
            raise ValueError("pairwise_log_weights scores pairs of two modalities")
        K = noise[0].shape[0]
        posts = [self.encode(m, x) for m, x in enumerate(xs)]
        out = []
        for s, o in ((0, 1), (1, 0)):
            loc, sc = posts[s]
            n_s, n_o = len(xs[s]), len(xs[o])
            z = D.rsample(self.posterior_family, loc, sc, noise[s])                        # (K, n_s, L)
            lq_own = D.log_prob(self.posterior_family, loc, sc, z).sum(-1).flatten()
            zf = z.reshape(-1, z.shape[-1])                                      # row k*n_s + i
            decode_size = max(self.mods[m].decode(zf[:1]).numel() for m in (s, o))
            rows = max(1, budget // max(n_o * (z.shape[-1] + 1), decode_size))
            lo, so = posts[o]
            pieces = []
            for a in range(0, len(zf), rows):
                zc = zf[a:a + rows]
                items = torch.arange(a, a + len(zc), device=zc.device) % n_s
                own = self.log_prior(zc) + self.loglik(s, self.mods[s].decode(zc), xs[s][items], scaled)
                ll = self.mods[o].pairwise_log_likelihood(self.mods[o].decode(zc), xs[o])
                ll = ll * self.llik_scaling[o] if scaled else ll
                lq_other = D.pairwise_log_prob(self.posterior_family, lo, so, zc)              # (rows, n_o)
                lq = torch.stack(torch.broadcast_tensors(lq_own[a:a + rows, None], lq_other))
                pieces.append(own[:, None] + ll - D.mixture_log_prob(lq))
            lw = torch.cat(pieces).view(K, n_s, n_o)
            out.append(lw if s == 0 else lw.transpose(1, 2))
        return torch.cat(out, 0)

    def noise_streams(self) -> int:
        return len(self.mods)

    def draw_pair_noise(self, n_pairs, K, generator=None):
        """None: new pairs re-index the strata's samples and decodes (no new noise)."""
        return None

    def pairs_noise(self, item_noise, J=None):
        """None: stratum s of a pair is its modality-s item's own sample."""
        return None

    def forward_noise(self, item_noise):
        """One stratum per modality: each item's noise is its stratum's noise."""
        return list(item_noise)

    def objective_terms(self, enc):
        """Stratified log weights of the mixture posterior (Shi et al. 2019's m_iwae)."""
        return [self.log_weights(enc)], 0.0

    def base_objective(self, enc, estimator="iwae", looser=False):
        """Stratified IWAE (or DReG surrogate, or ELBO) of the mixture posterior; ``looser`` asks
        for the DReG surrogate of the looser stratified bound (``objectives.dreg``)."""
        if estimator == "dreg":
            return O.dreg(self.log_weights(enc, detach_q=True), enc.z, looser)
        return super().base_objective(enc, estimator)

    def joint_posterior(self, xs):
        return None


def _permutation_blocks(J: torch.Tensor, B: int) -> torch.Tensor | None:
    """J reshaped to (M, nb, B) when every length-B block of every row is a permutation, else None."""
    if J.shape[1] % B:
        return None
    Jb = J.reshape(J.shape[0], -1, B)
    if not torch.equal(Jb.sort(-1).values, torch.arange(B, device=J.device).expand_as(Jb)):
        return None
    return Jb
