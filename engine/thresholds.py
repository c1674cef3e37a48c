"""Thresholds that turn relatedness scores (PMI) into related / unrelated verdicts (paper §4.5).

numpy only (no torch), so the dashboard's threshold tuner imports it in milliseconds and can call
it on cached scores at every slider move. ``engine.relatedness`` re-exports these functions.
"""
from __future__ import annotations

import numpy as np

from engine.errors import ConfigError, DataError


def _as_arrays(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape or s.size == 0:
        raise DataError(f"scores and labels must be non-empty and of equal length, got {s.size} and {y.size}")
    if not np.isin(y, (0, 1)).all():
        raise DataError("labels must be 0/1 or boolean (1 = related)")
    if not np.isfinite(s).all():
        raise DataError("scores must be finite")
    return s, y.astype(bool)


def _metrics(tp, fp, tn, fn) -> dict:
    """Precision, recall, F1 and accuracy from counts (vectorised; 0 where undefined)."""
    tp, fp, tn, fn = (np.asarray(v, np.float64) for v in (tp, fp, tn, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    accuracy = (tp + tn) / (tp + fp + tn + fn)
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": accuracy}


def _cuts(scores, labels, what: str):
    """The distinct scores high to low and the (tp, fp) counts of the cut at each of them.

    Returns (distinct scores u, tp, fp, P, N): cut c keeps every score >= u[c], so tp[c] / fp[c]
    count the related / unrelated items at or above it.
    """
    s, y = _as_arrays(scores, labels)
    if y.all() or not y.any():
        raise DataError(f"{what} needs both related and unrelated examples")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])          # end of each run of equal scores
    tp = np.cumsum(y)[last]
    return s[last], tp, (last + 1) - tp, int(y.sum()), int((~y).sum())


def roc_pr_curves(scores, labels) -> dict:
    """ROC (fpr, tpr from (0, 0) to (1, 1)) and precision-recall curves over every threshold, with
    the ROC area (trapezoids) and average precision sum_c (R_c - R_{c-1}) P_c (as scikit-learn)."""
    _, tp, fp, P, N = _cuts(scores, labels, "ROC and PR curves")
    fpr, tpr = np.r_[0.0, fp / N], np.r_[0.0, tp / P]
    precision, recall = tp / (tp + fp), tp / P
    return {"fpr": fpr, "tpr": tpr, "precision": np.r_[1.0, precision], "recall": np.r_[0.0, recall],
            "roc_auc": float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2),
            "average_precision": float(np.sum(np.diff(np.r_[0.0, recall]) * precision))}


def fit_threshold(scores, labels, criterion: str = "f1") -> tuple[float, dict]:
    """The threshold t (related iff score >= t) maximising F1 or Youden's J = TPR - FPR.

    Candidates are all cuts between distinct sorted scores, evaluated at once by cumulative sums;
    the chosen t lies midway between the last score kept and the next lower one (ties: the
    highest such t). Returns (t, dict(precision, recall, f1, accuracy)) on the fitting data.
    """
    if criterion not in ("f1", "youden"):
        raise ConfigError(f"criterion must be 'f1' or 'youden', got {criterion!r}")
    u, tp, fp, P, N = _cuts(scores, labels, "fitting a threshold")
    m = _metrics(tp, fp, N - fp, P - tp)
    objective = m["f1"] if criterion == "f1" else tp / P - fp / N
    k = int(np.argmax(objective))
    t = float(u[k] if k + 1 == len(u) else 0.5 * (u[k] + u[k + 1]))
    return t, {name: float(v[k]) for name, v in m.items()}


def classification_report(scores, labels, threshold: float) -> dict:
    """Precision, recall, F1, accuracy and the confusion counts at ``threshold`` (score >= t: related).

    numpy only, so a live threshold slider can call it on cached scores at every update.
    """
    s, y = _as_arrays(scores, labels)
    pred = s >= threshold
    tp = int(np.count_nonzero(pred & y))
    fp = int(np.count_nonzero(pred & ~y))
    fn = int(np.count_nonzero(~pred & y))
    tn = int(y.size - tp - fp - fn)
    m = {k: float(v) for k, v in _metrics(tp, fp, tn, fn).items()}
    return {**m, "tp": tp, "fp": fp, "tn": tn, "fn": fn, "threshold": float(threshold)}


def split_fit_report(related: np.ndarray, unrelated: np.ndarray, seed: int = 0,
                     criterion: str = "f1") -> dict:
    """Fit a threshold on a random half of each set and report P/R/F1 on the other half."""
    rng = np.random.default_rng(seed)
    r, u = rng.permutation(related), rng.permutation(unrelated)
    hr, hu = len(r) // 2, len(u) // 2
    if min(hr, hu) < 1:
        raise DataError("need at least two related and two unrelated scores to fit and report")

    def labelled(a, b):
        return np.concatenate([a, b]), np.concatenate([np.ones(len(a), bool), np.zeros(len(b), bool)])

    t, fit = fit_threshold(*labelled(r[:hr], u[:hu]), criterion)
    rep = classification_report(*labelled(r[hr:], u[hu:]), t)
    return {"threshold": t, "fit": fit, **{k: rep[k] for k in ("precision", "recall", "f1", "accuracy")},
            "note": f"threshold fitted by {criterion} on a random half of the labelled pairs; "
                    "precision/recall/f1/accuracy on the other half"}
