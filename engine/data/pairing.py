"""Subsampling and cross-modal pairing by label (paper §4.1, §4.4; Shi et al. 2019 MNIST-SVHN).

All functions are deterministic from their seed and vectorised per label class.
"""
from __future__ import annotations

import numpy as np

from engine.errors import ConfigError, DataError

MAX_RESAMPLE_ROUNDS = 1000


def subsample(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified ``fraction`` of the set: ``round(fraction * n_c)`` per class,
    at least one per non-empty class. ``fraction == 1`` returns every index in order."""
    labels = np.asarray(labels)
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return np.arange(labels.size)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(labels.size), labels))   # grouped by class, random within
    sorted_labels = labels[order]
    classes, starts, counts = np.unique(sorted_labels, return_index=True, return_counts=True)
    cls = np.searchsorted(classes, sorted_labels)
    rank = np.arange(labels.size) - starts[cls]
    keep = np.maximum(np.rint(fraction * counts).astype(np.int64), 1)
    return np.sort(order[rank < keep[cls]])


def _covering_draws(members: np.ndarray, n: int, dm: int, rng: np.random.Generator) -> np.ndarray:
    """(dm, n) draws from ``members``: each row concatenates fresh random permutations of
    ``members`` and is cut to length n, so for n >= len(members) every member appears in every row."""
    reps = -(-n // members.size)
    perm = np.argsort(rng.random((dm, reps, members.size)), axis=-1).reshape(dm, -1)[:, :n]
    return members[perm]


def pair_by_label(labels_a: np.ndarray, labels_b: np.ndarray, dm: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (ia, ib) pairing A and B instances that share a label.

    Scheme ("max(len)"): for a class with n_a instances in A and n_b in B, let n = max(n_a, n_b);
    in each of dm rounds, a random covering sequence of A's members (permutations concatenated,
    cut to n) is zipped with one of B's. So every A instance gets >= dm partners of its label in
    B and every B instance >= dm partners in A — the union of both directions of Shi et al.
    2019 — with dm * n pairs per class. Classes missing from either set give no pairs.
    """
    if dm < 1:
        raise ConfigError(f"dm must be >= 1, got {dm}")
    labels_a, labels_b = np.asarray(labels_a), np.asarray(labels_b)
    rng = np.random.default_rng(seed)
    ia, ib = [], []
    for c in np.intersect1d(labels_a, labels_b):
        a, b = np.flatnonzero(labels_a == c), np.flatnonzero(labels_b == c)
        n = max(a.size, b.size)
        ia.append(_covering_draws(a, n, dm, rng).ravel())
        ib.append(_covering_draws(b, n, dm, rng).ravel())
    if not ia:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(ia).astype(np.int64), np.concatenate(ib).astype(np.int64)


def unrelated_pairs(labels_a: np.ndarray, labels_b: np.ndarray, n: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uniformly random cross-modal pairs (ia, ib) whose labels differ, by vectorised
    rejection: pairs with equal labels are redrawn together until none are left."""
    labels_a, labels_b = np.asarray(labels_a), np.asarray(labels_b)
    if n > 0 and (labels_a.size == 0 or labels_b.size == 0):
        raise DataError("unrelated_pairs needs non-empty label sets")
    ua, ub = np.unique(labels_a), np.unique(labels_b)
    if n > 0 and ua.size == 1 and ub.size == 1 and ua[0] == ub[0]:
        raise DataError(f"no unrelated pairs exist: both sets only hold label {ua[0]}")
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, max(labels_a.size, 1), n)
    ib = rng.integers(0, max(labels_b.size, 1), n)
    same = np.flatnonzero(labels_a[ia] == labels_b[ib]) if n > 0 else np.empty(0, np.int64)
    for _ in range(MAX_RESAMPLE_ROUNDS):
        if same.size == 0:
            return ia.astype(np.int64), ib.astype(np.int64)
        ia[same] = rng.integers(0, labels_a.size, same.size)
        ib[same] = rng.integers(0, labels_b.size, same.size)
        same = same[labels_a[ia[same]] == labels_b[ib[same]]]
    raise DataError("could not draw unrelated pairs: almost every pair shares its label")
