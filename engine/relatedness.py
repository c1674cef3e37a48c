"""Relatedness by pointwise mutual information (paper §3.1, §4.5).

I(x, y) = log p(x, y) - log p(x) - log p(y), each term an IWAE_K estimate from the trained model:
the joint through ``model.log_weights`` (MMVAE: stratified over its mixture, K samples per expert),
the marginals through ``model.unimodal_log_weights`` (q(z | x_m) and modality m's decoder; JMVAE
through its unimodal encoders). All terms use ``scaled=True``: the likelihood-scaled densities
the model was trained on (MNIST weighted by 3072/784 beside SVHN), so a pair's PMI measures the
dependence the training objective saw; with scaled=False MNIST's term would be ~4x smaller.

Noise is a pure function of (seed, stream, item index) (:class:`ItemNoise`), turned by the model
into the noise of its forward pass and of any pair (``forward_noise``, ``pairs_noise``), so a score
does not depend on batching, and ``score_matrix``'s diagonal equals ``score_pairs`` on the same pairs.
Thresholds turn scores into related / unrelated predictions (``fit_threshold``,
``classification_report``); ``python -m engine relatedness RUN_DIR`` evaluates a trained run.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from tqdm.auto import tqdm

import engine
from engine import objectives as O
from engine.checkpoints import atomic_write_text
from engine.data.pairing import unrelated_pairs
from engine.errors import ConfigError, DataError
from engine.models import distributions as D
from engine.options import add_device_arg, add_K_arg
from engine.registry import build_data
from engine.thresholds import classification_report, fit_threshold, roc_pr_curves, split_fit_report  # noqa: F401

STREAMS = {"x": 0, "y": 1, "ux": 2, "uy": 3}   # joint noise of x / y items, marginal noise of x / y
NOISE_CHUNK = 256            # items per independently seeded noise chunk
ELEMENT_BUDGET = 1 << 24     # floats per gathered likelihood tensor (bounds score_matrix's memory)
PROGRESS_MIN = 4096          # show a progress bar from this many pairs on (progress=None)


class ItemNoise:
    """Standard sampling noise for item i of a stream as a pure function of (seed, stream, i).

    Noise is drawn on the CPU in chunks of NOISE_CHUNK items, each chunk from its own generator
    seeded by (seed, stream, chunk), so any batching of the items sees the same numbers.
    """

    def __init__(self, dist: str, K: int, latent_dim: int, seed: int = 0, device=None):
        self.dist, self.K, self.latent_dim, self.seed, self.device = dist, K, latent_dim, seed, device

    def _chunk(self, stream: str, c: int) -> torch.Tensor:
        state = np.random.SeedSequence([self.seed, STREAMS[stream], c]).generate_state(2, np.uint64)[0]
        g = torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))
        return D.noise(self.dist, (self.K, NOISE_CHUNK, self.latent_dim), generator=g)

    def take(self, stream: str, start: int, stop: int) -> torch.Tensor:
        """(K, stop - start, L) noise of items start..stop-1 of ``stream``."""
        first, last = start // NOISE_CHUNK, (stop - 1) // NOISE_CHUNK
        block = torch.cat([self._chunk(stream, c) for c in range(first, last + 1)], 1)
        off = first * NOISE_CHUNK
        return block[:, start - off:stop - off].to(self.device)


def _marginals(model, x: torch.Tensor, m: int, K: int, noise: torch.Tensor) -> torch.Tensor:
    """IWAE_K estimate of log p(x_m) per item, (B,)."""
    return O.iwae(model.unimodal_log_weights(x, m, K, noise=noise, scaled=True))


def _event_size(model) -> int:
    return max(int(np.prod(mod.event_shape)) if mod.event_shape else 1 for mod in model.mods)


def _check_pairs(xs: torch.Tensor, ys: torch.Tensor, same_length: bool) -> None:
    if len(xs) == 0 or len(ys) == 0:
        raise DataError("no items to score")
    if same_length and len(xs) != len(ys):
        raise DataError(f"score_pairs needs as many x as y items, got {len(xs)} and {len(ys)}")


def score_pairs(model, xs: torch.Tensor, ys: torch.Tensor, K: int = 30, batch_size: int = 64,
                seed: int = 0, progress: bool | None = None, offset: int = 0) -> np.ndarray:
    """PMI I(xs[i], ys[i]) for every i, as a float64 array (len(xs),).

    Pair i uses item noise offset + i of the x, y, ux and uy streams of ``ItemNoise(seed)`` (an
    offset lets a long list be scored in pieces with the noise of one call); the result does not
    depend on ``batch_size``. ``progress`` None: a bar from PROGRESS_MIN pairs on.
    """
    _check_pairs(xs, ys, same_length=True)
    if K < 1 or batch_size < 1:
        raise ConfigError(f"K and batch_size must be >= 1, got K={K}, batch_size={batch_size}")
    n = len(xs)
    noise = ItemNoise(model.posterior_family, K, model.latent_dim, seed, model.device)
    out = np.empty(n, np.float64)
    show = n >= PROGRESS_MIN if progress is None else progress
    with torch.inference_mode():
        for a in tqdm(range(0, n, batch_size), disable=not show, desc="PMI", unit="batch"):
            b = min(a + batch_size, n)
            x, y = xs[a:b].to(model.device), ys[a:b].to(model.device)
            i, j = offset + a, offset + b
            ex, ey = noise.take("x", i, j), noise.take("y", i, j)
            enc = model([x, y], K, noise=model.forward_noise([ex, ey]))
            joint = O.iwae(model.log_weights(enc, scaled=True))
            px = _marginals(model, x, 0, K, noise.take("ux", i, j))
            py = _marginals(model, y, 1, K, noise.take("uy", i, j))
            out[a:b] = (joint - px - py).double().cpu().numpy()
    return out


def score_index(model, modalities, index, K: int = 30, batch_size: int = 64, seed: int = 0,
                progress: bool | None = None, piece: int = 8192) -> np.ndarray:
    """PMI of the pairs ``index`` (P, 2) into two unimodal tensors, gathered ``piece`` pairs at a
    time (memory stays bounded for millions of pairs); equals score_pairs on the gathered pairs."""
    index = torch.as_tensor(np.asarray(index), dtype=torch.int64)
    if index.ndim != 2 or index.shape[1] != 2 or len(index) == 0:
        raise DataError(f"index must be a non-empty (P, 2) array, got shape {tuple(index.shape)}")
    show = len(index) >= PROGRESS_MIN if progress is None else progress
    one = len(index) <= piece       # one piece: score_pairs shows the bar per batch
    out = [score_pairs(model, modalities[0][part[:, 0]], modalities[1][part[:, 1]], K, batch_size, seed,
                       show and one, offset=a)
           for a, part in tqdm(zip(range(0, len(index), piece), index.split(piece)), disable=not show or one,
                               total=-(-len(index) // piece), desc="PMI", unit="piece")]
    return np.concatenate(out)


def score_matrix(model, xs: torch.Tensor, ys: torch.Tensor, K: int = 30, seed: int = 0,
                 block: int = 64, progress: bool | None = None) -> np.ndarray:
    """All-pairs PMI, (len(xs), len(ys)): entry (i, j) = I(xs[i], ys[j]).

    Marginals are computed once per item. A model with ``has_pairwise_kernel`` (MMVAE) scores blocks
    of x rows against all y items with ``pairwise_log_weights`` (each item decoded once); other
    models take ``block`` x and ``block`` y items at a time: one forward pass per block pair, then
    ``log_weights`` over every (i, j) of the block in chunks sized by ELEMENT_BUDGET. x item i
    and y item j carry the noise score_pairs gives pair i and pair j, so the diagonal of the
    result equals score_pairs(xs, ys) on equal-length inputs.
    """
    _check_pairs(xs, ys, same_length=False)
    if K < 1 or block < 1:
        raise ConfigError(f"K and block must be >= 1, got K={K}, block={block}")
    if model.has_pairwise_kernel:
        return _score_matrix_kernel(model, xs, ys, K, seed, progress)
    return _score_matrix_blocks(model, xs, ys, K, seed, block, progress)


def _marginal_rows(model, items: torch.Tensor, m: int, K: int, noise: ItemNoise, stream: str,
                   block: int) -> torch.Tensor:
    """IWAE_K log p(x_m) of every item, ``block`` items at a time, with the item noise of ``stream``."""
    n, dev = len(items), model.device
    return torch.cat([_marginals(model, items[a:a + block].to(dev), m, K, noise.take(stream, a, min(a + block, n)))
                      for a in range(0, n, block)])


def _score_matrix_kernel(model, xs, ys, K, seed, progress) -> np.ndarray:
    """Blocks of x rows against all y items through ``model.pairwise_log_weights`` (every item is
    encoded and decoded once per block; the all-pairs likelihoods are cdist-style kernels)."""
    dev = model.device
    nx, ny = len(xs), len(ys)
    noise = ItemNoise(model.posterior_family, K, model.latent_dim, seed, dev)
    rows = max(1, 4 * ELEMENT_BUDGET // (2 * K * ny))
    out = np.empty((nx, ny), np.float64)
    show = nx * ny >= PROGRESS_MIN if progress is None else progress
    with torch.inference_mode():
        px = _marginal_rows(model, xs, 0, K, noise, "ux", 256)
        py = _marginal_rows(model, ys, 1, K, noise, "uy", 256)
        y, ey = ys.to(dev), noise.take("y", 0, ny)
        for a in tqdm(range(0, nx, rows), disable=not show, desc="PMI matrix", unit="block"):
            b = min(a + rows, nx)
            lw = model.pairwise_log_weights([xs[a:b].to(dev), y], [noise.take("x", a, b), ey])
            out[a:b] = (O.iwae(lw) - px[a:b, None] - py[None, :]).double().cpu().numpy()
    return out


def _score_matrix_blocks(model, xs, ys, K, seed, block, progress) -> np.ndarray:
    """Any model: block pairs of items, one forward pass each, ``log_weights`` over every pair."""
    dev = model.device
    nx, ny = len(xs), len(ys)
    noise = ItemNoise(model.posterior_family, K, model.latent_dim, seed, dev)
    per_pair = model.n_strata * K * _event_size(model)          # floats one pair's likelihood terms gather
    block = max(1, min(block, 4 * ELEMENT_BUDGET // per_pair))
    chunk = max(1, ELEMENT_BUDGET // per_pair)
    out = np.empty((nx, ny), np.float64)
    blocks = [(a, min(a + block, nx), c, min(c + block, ny)) for a in range(0, nx, block) for c in range(0, ny, block)]
    show = nx * ny >= PROGRESS_MIN if progress is None else progress
    with torch.inference_mode():
        px = _marginal_rows(model, xs, 0, K, noise, "ux", block)
        py = _marginal_rows(model, ys, 1, K, noise, "uy", block)
        for a, b, c, d in tqdm(blocks, disable=not show, desc="PMI matrix", unit="block"):
            B = max(b - a, d - c)   # both modalities need the same batch size: pad the shorter by repeats
            ix = torch.arange(B).clamp(max=b - a - 1)
            iy = torch.arange(B).clamp(max=d - c - 1)
            x, y = xs[a:b][ix].to(dev), ys[c:d][iy].to(dev)
            ex, ey = noise.take("x", a, b)[:, ix.to(dev)], noise.take("y", c, d)[:, iy.to(dev)]
            enc = model([x, y], K, noise=model.forward_noise([ex, ey]))
            J = torch.cartesian_prod(torch.arange(b - a), torch.arange(d - c)).T.to(dev)   # (2, P), row-major
            vals = []
            for part in J.split(chunk, 1):
                vals.append(O.iwae(model.log_weights(enc, part, noise=model.pairs_noise([ex, ey], part), scaled=True)))
            joint = torch.cat(vals).view(b - a, d - c)
            out[a:b, c:d] = (joint - px[a:b, None] - py[None, c:d]).double().cpu().numpy()
    return out


# ---- related vs unrelated ------------------------------------------------------------------------
def evaluate_relatedness(model, data, n_pairs: int = 1000, K: int = 30, seed: int = 0,
                         batch_size: int = 64, progress: bool | None = None) -> dict:
    """PMI of ``n_pairs`` random related test pairs and as many random unrelated ones.

    Unrelated pairs come from the unimodal test sets with differing labels
    (engine.data.pairing.unrelated_pairs). Returns auc, average_precision (related = 1)
    and the two PMI arrays (pmi_related, pmi_unrelated) for histograms.
    """
    if n_pairs < 1:
        raise ConfigError(f"n_pairs must be >= 1, got {n_pairs}")
    test = data.test
    n = min(n_pairs, len(test))
    idx = torch.from_numpy(np.random.default_rng(seed).choice(len(test), n, replace=False))
    (xr, yr), _ = test.batch(idx)
    (xa, la), (xb, lb) = (data.unimodal["test"][name] for name in data.names)
    ia, ib = unrelated_pairs(la.numpy(), lb.numpy(), n, seed)
    related = score_pairs(model, xr, yr, K, batch_size, seed, progress)
    unrelated = score_pairs(model, xa[torch.from_numpy(ia)], xb[torch.from_numpy(ib)], K, batch_size, seed, progress)
    scores = np.concatenate([related, unrelated])
    labels = np.concatenate([np.ones(n, bool), np.zeros(n, bool)])
    curves = roc_pr_curves(scores, labels)
    return {"auc": curves["roc_auc"], "average_precision": curves["average_precision"],
            "n_pairs": n, "K": K, "seed": seed, "pmi_related": related, "pmi_unrelated": unrelated}


# ---- CLI ---------------------------------------------------------------------------------------
def add_parser(sub) -> None:
    p = sub.add_parser("relatedness", help="PMI of related vs unrelated test pairs (AUC, threshold, P/R/F1)",
                       description="Score related and unrelated test pairs of a trained run by PMI; writes "
                                   "relatedness.json, pmi_related.npy and pmi_unrelated.npy beside the checkpoint.")
    p.add_argument("run_dir", help="run directory (or checkpoint.pt)")
    p.add_argument("--pairs", type=int, default=1000, help="related and unrelated pairs each (default 1000)")
    add_K_arg(p, 30, "importance samples per IWAE estimate (default 30)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    add_device_arg(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_relatedness)


def run_relatedness(a: argparse.Namespace) -> int:
    model = engine.load(a.run_dir, a.device)
    data = build_data(model.config.data)
    res = evaluate_relatedness(model, data, a.pairs, a.K, a.seed, a.batch_size, progress=True)
    rel, unrel = res.pop("pmi_related"), res.pop("pmi_unrelated")
    res.update(split_fit_report(rel, unrel, a.seed))
    res.update({"variant": model.config.variant, "pmi_related_mean": float(rel.mean()),
                "pmi_unrelated_mean": float(unrel.mean())})
    run = model.source_path.parent
    np.save(run / "pmi_related.npy", rel)
    np.save(run / "pmi_unrelated.npy", unrel)
    atomic_write_text(run / "relatedness.json", json.dumps(res, indent=2))
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['variant']}: AUC {res['auc']:.3f}  AP {res['average_precision']:.3f}  "
              f"threshold {res['threshold']:.2f}  P {res['precision']:.3f}  R {res['recall']:.3f}  "
              f"F1 {res['f1']:.3f}  (PMI related {res['pmi_related_mean']:.2f}, "
              f"unrelated {res['pmi_unrelated_mean']:.2f}; wrote {run / 'relatedness.json'})")
    return 0


__all__ = ["ItemNoise", "score_pairs", "score_index", "score_matrix", "evaluate_relatedness",
           "fit_threshold", "classification_report", "split_fit_report", "add_parser"]
