"""Typed run configuration: dataclasses saved as JSON beside every checkpoint.

A run's ``config.json`` holds a ``RunConfig``; it alone is enough to rebuild the model.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.registry import parse_variant

DATASETS = ("mnist-svhn", "cub", "cub-synthetic")
SOURCES = ("offline", "real")


@dataclass
class DataConfig:
    """Which data, how much of it, and how pairs are made (paper §4.1, §4.4)."""

    dataset: str = "mnist-svhn"
    source: str = "offline"          # offline: embedded default; real: torchvision / CUB files under root
    root: str | None = None          # data root for real sources (and cub-synthetic output)
    download: bool = False           # allow torchvision downloads (needs internet)
    data_fraction: float = 1.0       # n% of each unimodal set, taken before pairing
    dm: int = 30                     # partners of the same digit per instance (MNIST-SVHN pairing)
    seed: int = 0
    features: str = "efficientnet-lite0"   # CUB image features: efficientnet-lite0 | resnet101

    def validate(self) -> None:
        _choice("dataset", self.dataset, DATASETS)
        _choice("source", self.source, SOURCES)
        _choice("features", self.features, ("efficientnet-lite0", "resnet101"))
        if not 0.0 < self.data_fraction <= 1.0:
            raise ConfigError(f"data_fraction must be in (0, 1], got {self.data_fraction}")
        if self.dm < 1:
            raise ConfigError(f"dm must be >= 1, got {self.dm}")


@dataclass
class ModelConfig:
    """Architecture: the model family and the latent space."""

    family: str = "mmvae"            # mmvae | mvae | jmvae
    latent_dim: int = 20
    learn_prior: bool = False        # learnable prior scale (MMVAE)
    alpha: float = 0.01              # JMVAE-kl weight on the KL(q(z|x,y) || q(z|x_m)) terms
    vocab_size: int = 0              # CUB sentence model (filled in from the data)
    feature_dim: int = 0             # CUB image features width (filled in from the data)

    def validate(self) -> None:
        _choice("family", self.family, ("mmvae", "mvae", "jmvae"))
        if self.latent_dim < 1:
            raise ConfigError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ConfigError(f"alpha must be a finite number >= 0, got {self.alpha}")


@dataclass
class ObjectiveConfig:
    """Eq. (4): -gamma * log p(x,y) + 1/2 [log sum_N p(x',y) + log sum_N p(x,y')]."""

    contrastive: str | None = None   # None: the model's usual objective; "iwae" (cI-) or "cubo" (cC-)
    K: int = 30
    N: int = 5
    gamma: float = 2.0
    dreg: bool = False               # DReG gradients for MMVAE's IWAE term
    looser: bool = False             # MMVAE: term 1 by the looser stratified bound (objectives.looser)

    def validate(self) -> None:
        if self.contrastive not in (None, "iwae", "cubo"):
            raise ConfigError(f"contrastive must be one of None, 'iwae', 'cubo', got {self.contrastive!r}")
        if self.K < 1:
            raise ConfigError(f"K must be >= 1, got {self.K}")
        if self.N < 1:
            raise ConfigError(f"N (negatives) must be >= 1, got {self.N}")
        if not (self.gamma > 0 or math.isinf(self.gamma)):
            raise ConfigError(f"gamma must be > 0, got {self.gamma}")


@dataclass
class TrainConfig:
    """The optimisation loop."""

    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    max_nonfinite: int = 10          # stop after this many non-finite losses in a row
    k_chunk: int | None = None       # evaluate the K samples in chunks of this size (flat peak memory)
    precision: str = "fp32"          # fp32 | bf16: encoder/decoder networks under bf16 autocast (CPU, CUDA)
    checkpoint_every: int = 500      # save checkpoint.pt every this many steps ...
    checkpoint_minutes: float = 10.0  # ... and after this many minutes since the last save (inf: never)
    divergence_tolerance: float = 1.0  # stop when held-out IWAE < best - tolerance * |best| (inf: never)

    def validate(self) -> None:
        _choice("device", self.device, ("auto", "cpu", "cuda", "mps"))
        _choice("precision", self.precision, ("fp32", "bf16"))
        if self.k_chunk is not None and self.k_chunk < 1:
            raise ConfigError(f"k_chunk must be >= 1, got {self.k_chunk}")
        for name in ("epochs", "batch_size", "max_nonfinite", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr}")
        for name in ("checkpoint_minutes", "divergence_tolerance"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0 (inf: never), got {getattr(self, name)}")


@dataclass
class RunConfig:
    """Everything needed to rebuild and retrain a run."""

    variant: str = "MMVAE"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "RunConfig":
        parse_variant(self.variant)
        for part in (self.data, self.model, self.objective, self.train):
            part.validate()
        if self.objective.contrastive is not None and self.train.batch_size < 2:
            raise ConfigError(f"{self.variant} draws its negatives from the batch: batch_size must be >= 2, "
                              f"got {self.train.batch_size}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; infinite floats are written as the string "inf"."""
        d = dataclasses.asdict(self)
        for part in d.values():
            if isinstance(part, dict):
                part.update({k: "inf" for k, v in part.items() if isinstance(v, float) and math.isinf(v)})
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "RunConfig":
        """The one validated reader of saved configs: every field is type-checked against the
        dataclass annotations (missing fields take their defaults; unknown ones are refused)."""
        if not isinstance(d, dict):
            raise ConfigError(f"a run config must be a JSON object, got {type(d).__name__}")
        sections = {f.name: f for f in dataclasses.fields(cls) if f.name != "variant"}
        unknown = sorted(set(d) - set(sections) - {"variant"})
        if unknown:
            raise ConfigError(f"unknown config entries {unknown}; expected variant, {', '.join(sections)}")
        variant = d.get("variant", "MMVAE")
        if not isinstance(variant, str):
            raise ConfigError(f"variant must be a string such as 'cI-MMVAE', got {variant!r}")
        hints = typing.get_type_hints(cls)
        parts = {name: _section(name, hints[name], d.get(name, {})) for name in sections}
        return cls(variant=variant, **parts)

    def save(self, path: str | Path) -> None:
        from engine.checkpoints import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no config at {path}")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from e


def _section(name: str, kind: type, values: Any):
    """Build one config section from a dict, type-checking each value against its annotation."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{name}' must be a JSON object, got {values!r}")
    hints = typing.get_type_hints(kind)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(f"unknown entries in config section '{name}': {unknown}; expected {', '.join(hints)}")
    return kind(**{k: _typed(f"{name}.{k}", hints[k], v) for k, v in values.items()})


def _typed(name: str, hint: Any, value: Any) -> Any:
    """``value`` if it has the annotated type (int, float, str, bool, optionally None), else ConfigError."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    if float in allowed and value in ("inf", "-inf"):
        return float(value)
    for t in allowed:
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is not type(None) and type(value) is t:
            return value
    names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise ConfigError(f"config entry {name} must be {names}, got {value!r} ({type(value).__name__})")


def _choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
