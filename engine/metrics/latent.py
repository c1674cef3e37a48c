"""Latent accuracy (paper §4.2 a): is the digit linearly readable from the latent space?

Per modality m: one sample z ~ q(z | x_m) for every item of the unimodal train set fits a
multinomial logistic regression (scikit-learn, on standardised z); the score is its accuracy on
one sample z ~ q(z | x_m) for every item of the unimodal test set. Samples, not posterior means,
as in Shi et al. 2019's analysis code.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm


@torch.no_grad()
def encode_samples(model, m: int, x: torch.Tensor, batch_size: int = 1000,
                   generator: torch.Generator | None = None, progress: bool = False) -> np.ndarray:
    """(N, L) latents z ~ q(z | x_m) for the items of ``x``, one sample each."""
    out = []
    for xb in tqdm(x.split(batch_size), disable=not progress, desc=f"encode {model.mods[m].name}", unit="batch"):
        loc, scale = model.unimodal_posterior(m, xb.to(model.device))
        out.append(model.posterior_sample(loc, scale, generator).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.latent_dim), np.float32)


def linear_accuracy(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray, y_test: np.ndarray,
                    max_iter: int = 1000) -> float:
    """Fit LogisticRegression on (z_train, y_train); accuracy on (z_test, y_test), in [0, 1]."""
    # scikit-learn takes ~2 s to import: only latent accuracy needs it
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_train)) < 2:
        raise ValueError("latent accuracy needs at least two classes in the train set")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    clf.fit(z_train, y_train)
    return float((clf.predict(z_test) == y_test).mean())


def latent_accuracy(model, m: int, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                    generator: torch.Generator | None = None, batch_size: int = 1000,
                    progress: bool = False) -> float:
    """Latent accuracy of modality m from unimodal (images, labels) train and test sets."""
    z_tr = encode_samples(model, m, train[0], batch_size, generator, progress)
    z_te = encode_samples(model, m, test[0], batch_size, generator, progress)
    return linear_accuracy(z_tr, train[1].numpy(), z_te, test[1].numpy())


__all__ = ["encode_samples", "linear_accuracy", "latent_accuracy"]
