"""Names used in the paper mapped to code: the nine variants, the model classes and the datasets."""
from __future__ import annotations

from engine.errors import ConfigError

FAMILY_NAMES = {"mmvae": "MMVAE", "mvae": "MVAE", "jmvae": "JMVAE"}
PREFIXES = {"": None, "ci-": "iwae", "cc-": "cubo"}
VARIANTS = tuple(p + f for f in ("MMVAE", "MVAE", "JMVAE") for p in ("", "cI-", "cC-"))


def parse_variant(name: str) -> tuple[str, str | None]:
    """'cI-MMVAE' -> ('mmvae', 'iwae'); case-insensitive. Unknown names list the valid ones."""
    low = name.strip().lower()
    for prefix, contrastive in PREFIXES.items():
        fam = low[len(prefix):] if low.startswith(prefix) else None
        if fam in FAMILY_NAMES and (prefix or "-" not in low):
            return fam, contrastive
    raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(VARIANTS)}")


def variant_name(family: str, contrastive: str | None) -> str:
    """The paper's name for a family and contrastive estimator."""
    prefix = {None: "", "iwae": "cI-", "cubo": "cC-"}[contrastive]
    return prefix + FAMILY_NAMES[family]


def model_class(family: str) -> type:
    """The model class of a family, to ask its capabilities (``supports_looser``, ``supports_dreg``,
    ``mixture_posterior``...) without building a model. Imported on first use: reading configs
    stays torch-free."""
    from engine.models import MODEL_CLASSES     # torch: imported on first use (see above)

    return MODEL_CLASSES[family]


def families_with(capability: str) -> str:
    """The paper's names of the families whose model class has ``capability``, for messages."""
    return " / ".join(FAMILY_NAMES[f] for f in FAMILY_NAMES if getattr(model_class(f), capability))


def build_data(cfg, progress=True, splits=("train", "test")):
    """Load the dataset a DataConfig names (imported lazily: CUB pulls in feature extraction).

    ``splits``: build only these (e.g. ("test",) for a viewer); ``progress``: see ``engine.progress``.
    """
    # Imported here: the data modules import torch (and CUB's, feature extraction); the registry stays torch-free.
    if cfg.dataset == "mnist-svhn":
        from engine.data.mnist_svhn import build_mnist_svhn

        return build_mnist_svhn(cfg, progress, splits)
    from engine.data.cub import build_cub

    return build_cub(cfg, progress, splits)


def model_from_config(cfg):
    """Build the (untrained) model a RunConfig describes."""
    from engine.models import build_model       # torch: imported on first use, as in model_class

    family, _ = parse_variant(cfg.variant)
    m = cfg.model
    weights = None if m.likelihood_weights is None else [float(w) for w in m.likelihood_weights.split(",")]
    return build_model(cfg.data.dataset, family, m.latent_dim, m.learn_prior, m.alpha,
                       m.vocab_size, m.feature_dim, weights)
