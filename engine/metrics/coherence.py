"""Coherence metrics (paper §4.2 b-d) and generation diversity (Appendix G.2, Figure 17).

Pure functions of a model (the MultimodalVAE generation interface: ``generate``,
``cross_generate``, ``joint_generate``, ``joint_posterior``, ``mods[m].name``), one digit
classifier per modality (any callable module mapping images to (N, 10) logits) and tensors.
All fractions are in [0, 1].
"""
from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

SYNERGY_NOT_APPLICABLE = (
    "not applicable to MMVAE: its joint posterior is the mixture of its unimodal posteriors, sampled "
    "equally from each, so synergy coherence would equal the coherence of single-way generation (paper §4.3)")
N_CLASSES = 10


@torch.no_grad()
def predict(classifier, x: torch.Tensor) -> torch.Tensor:
    """Predicted class (N,) of a batch of images."""
    return classifier(x).argmax(-1)


def _names(model) -> list[str]:
    return [mod.name for mod in model.mods]


def _batches(n: int, batch_size: int) -> list[int]:
    return [min(batch_size, n - s) for s in range(0, n, batch_size)]


@torch.no_grad()
def joint_coherence(model, classifiers: Sequence, n: int = 10000, batch_size: int = 1000,
                    generator: torch.Generator | None = None, progress: bool = False) -> dict:
    """Decode ``n`` prior samples into every modality; coherence = fraction whose predicted digits all agree.

    Returns {"coherence": float, "counts": {name: [10 ints]}} -- the counts are the class
    histograms of the joint generations per modality (the diversity of Figure 17).
    """
    if n < 1:
        raise ValueError(f"n (prior samples) must be >= 1, got {n}")
    names = _names(model)
    agree = 0
    counts = torch.zeros(len(names), N_CLASSES, dtype=torch.long)
    for b in tqdm(_batches(n, batch_size), disable=not progress, desc="joint coherence", unit="batch"):
        preds = torch.stack([predict(c, x) for c, x in zip(classifiers, model.generate(b, generator))])
        agree += int((preds == preds[:1]).all(0).sum())
        counts += torch.nn.functional.one_hot(preds.cpu(), N_CLASSES).sum(1)
    return {"coherence": agree / n, "counts": {name: counts[m].tolist() for m, name in enumerate(names)}}


@torch.no_grad()
def cross_coherence(model, classifiers: Sequence, xs: list[torch.Tensor], labels: torch.Tensor,
                    batch_size: int = 500, generator: torch.Generator | None = None,
                    progress: bool = False) -> dict[str, float]:
    """For every ordered pair (m -> n), m != n: generate modality n from z ~ q(z | x_m) and return
    the fraction whose predicted digit equals the input's label, keyed ``"<m>_to_<n>"``."""
    names = _names(model)
    M = len(names)
    hits = {(m, k): 0 for m in range(M) for k in range(M) if m != k}
    N = len(labels)
    for s in tqdm(range(0, N, batch_size), disable=not progress, desc="cross coherence", unit="batch"):
        y = labels[s:s + batch_size].to(model.device)
        for m, k in hits:
            out = model.cross_generate(xs[m][s:s + batch_size].to(model.device), m, k, generator)
            hits[(m, k)] += int((predict(classifiers[k], out) == y).sum())
    return {f"{names[m]}_to_{names[k]}": h / max(N, 1) for (m, k), h in hits.items()}


@torch.no_grad()
def synergy_coherence(model, classifiers: Sequence, xs: list[torch.Tensor], labels: torch.Tensor,
                      batch_size: int = 500, generator: torch.Generator | None = None,
                      progress: bool = False) -> dict[str, float] | None:
    """Generate every modality from z ~ q(z | x_1..M); fraction whose predicted digit equals the label,
    keyed ``"joint_to_<n>"``. None where the joint posterior is a mixture (MMVAE; see SYNERGY_NOT_APPLICABLE)."""
    names = _names(model)
    if model.mixture_posterior:
        return None
    hits = [0] * len(names)
    N = len(labels)
    for s in tqdm(range(0, N, batch_size), disable=not progress, desc="synergy coherence", unit="batch"):
        batch = [x[s:s + batch_size].to(model.device) for x in xs]
        y = labels[s:s + batch_size].to(model.device)
        for k in range(len(names)):
            hits[k] += int((predict(classifiers[k], model.joint_generate(batch, k, generator)) == y).sum())
    return {f"joint_to_{name}": h / max(N, 1) for name, h in zip(names, hits)}


__all__ = ["joint_coherence", "cross_coherence", "synergy_coherence", "predict", "SYNERGY_NOT_APPLICABLE"]
