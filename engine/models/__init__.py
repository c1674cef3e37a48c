"""Multimodal VAEs (MMVAE, MVAE, JMVAE) over per-modality encoders and decoders."""
from engine.models.base import Encoded, MultimodalVAE
from engine.models.jmvae import JMVAE
from engine.models.mmvae import MMVAE
from engine.models.modalities import build_modalities
from engine.models.mvae import MVAE

MODEL_CLASSES = {"mmvae": MMVAE, "mvae": MVAE, "jmvae": JMVAE}


def build_model(dataset: str, family: str, latent_dim: int = 20, learn_prior: bool = False,
                alpha: float = 0.01, vocab_size: int = 0, feature_dim: int = 0,
                likelihood_weights: list[float] | None = None) -> MultimodalVAE:
    """A model of the given family over the dataset's modalities; ``likelihood_weights`` replace
    Shi et al.'s automatic likelihood scaling (None keeps it)."""
    mods = build_modalities(dataset, latent_dim, vocab_size, feature_dim)
    model = MODEL_CLASSES[family].from_settings(mods, latent_dim, learn_prior, alpha)
    return model if likelihood_weights is None else model.set_likelihood_weights(likelihood_weights)


__all__ = ["Encoded", "MultimodalVAE", "MMVAE", "MVAE", "JMVAE", "MODEL_CLASSES", "build_model"]
