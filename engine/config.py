"""Typed run configuration: dataclasses saved as JSON beside every checkpoint, and the schema.

A run's ``config.json`` holds a ``RunConfig``; it alone is enough to rebuild the model. Every
setting is one dataclass field whose ``metadata`` (see ``setting``) holds its help text, its check
(engine.validate), its command-line flag and whether it may change on ``--resume``; the ``train``
flags, the saved config, presets and resume are all generated from these fields. ``resolve``
merges the defaults, the dataset-dependent defaults, a preset and explicit overrides.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from engine import validate as V
from engine.errors import ConfigError
from engine.registry import FAMILY_NAMES, model_class, parse_variant, variant_name

DATASETS = ("mnist-svhn", "cub", "cub-synthetic")
SOURCES = ("offline", "real")
FEATURES = ("efficientnet-lite0", "resnet101")
PRECISIONS = ("fp32", "bf16")
SECTIONS = ("data", "model", "objective", "train")


def setting(default: Any = None, help: str = "", check: Callable[[Any], Any] | None = None, *,
            flag: str | None = "", safe_on_resume: bool = False, derived: bool = False,
            default_for: Callable[["RunConfig"], Any] | None = None):
    """One setting: a dataclass field with its help text, its check, its flag ("": --field-name;
    None: no flag), whether ``--resume`` may change it, whether it is derived (filled in from the
    variant or the data, never chosen) and its dataset-dependent default ``default_for(cfg)``."""
    return field(default=default, metadata={"help": help, "check": check, "flag": None if derived else flag,
                                            "safe_on_resume": safe_on_resume, "derived": derived,
                                            "default_for": default_for})


def _supports_looser(cfg: "RunConfig") -> bool:
    """Whether the variant's model class has strata for the looser bound (asked, not named)."""
    return model_class(parse_variant(cfg.variant)[0]).supports_looser


def _is_cub(cfg: "RunConfig") -> bool:
    return cfg.data.dataset != "mnist-svhn"


@dataclass
class DataConfig:
    """Which data, how much of it, and how pairs are made (paper §4.1, §4.4)."""

    dataset: str = setting("mnist-svhn", "dataset", V.one_of(DATASETS))
    source: str = setting("offline", "offline: embedded default that needs no download; real: torchvision/CUB "
                          "files under --data-root", V.one_of(SOURCES))
    root: str | None = setting(None, "root of the real datasets (or of the synthetic CUB)", flag="--data-root")
    download: bool = setting(False, "let torchvision download MNIST/SVHN (needs internet)")
    data_fraction: float = setting(1.0, "fraction n of each unimodal train set (§4.4)", V.fraction)
    dm: int = setting(30, "same-digit partners per instance (§4.1)", V.positive_int)
    seed: int = setting(0, "seed of the pairing, the data and the training", V.integer, flag="--seed")
    features: str = setting("efficientnet-lite0", "CUB image features (resnet101 needs its weights on disk)",
                            V.one_of(FEATURES))

    def validate(self) -> None:
        _check_fields(self)


@dataclass
class ModelConfig:
    """Architecture: the model family and the latent space."""

    family: str = setting("mmvae", "model family (from the variant)", V.one_of(tuple(FAMILY_NAMES)),
                          derived=True)
    latent_dim: int = setting(20, "latent dimensions (default 20 for MNIST-SVHN, 64 for CUB as Shi et al. 2019)",
                              V.positive_int, default_for=lambda cfg: 64 if _is_cub(cfg) else 20)
    learn_prior: bool = setting(False, "learnable prior scale (MMVAE)")
    alpha: float = setting(0.01, "JMVAE-kl weight on the KL(q(z|x,y) || q(z|x_m)) terms", V.nonnegative_float)
    likelihood_weights: str | None = setting(None, "training weight of each modality's log-likelihood, comma-separated "
                                             "in the data's order (MNIST,SVHN or image,caption), e.g. 0.025,5; "
                                             "default: Shi et al. 2019's rule (MNIST x 3072/784; CUB image x 32 / "
                                             "feature width, caption x 1)", V.likelihood_weights)
    vocab_size: int = setting(0, "CUB sentence model (filled in from the data)", derived=True)
    feature_dim: int = setting(0, "CUB image features width (filled in from the data)", derived=True)

    def validate(self) -> None:
        _check_fields(self)


@dataclass
class ObjectiveConfig:
    """Eq. (4): -gamma * log p(x,y) + 1/2 [log sum_N p(x',y) + log sum_N p(x,y')]."""

    contrastive: str | None = setting(None, "None: the model's usual objective; iwae (cI-) or cubo (cC-)",
                                      V.one_of((None, "iwae", "cubo")), derived=True)
    K: int = setting(30, "importance samples", V.positive_int, flag="--K")
    N: int = setting(5, "N in-batch negatives per pair", V.positive_int, flag="--negatives")
    gamma: float = setting(2.0, "gamma of eq. (4) (inf = baseline)", V.gamma_value)
    dreg: bool = setting(False, "DReG gradients for the IWAE term (MMVAE; with --looser, Shi et al. 2019's "
                         "m_dreg_looser, their MNIST-SVHN setting)")
    looser: bool = setting(False, "MMVAE: average the IWAE of each expert's samples instead of one IWAE over all "
                           "(Shi et al. 2019's looser bound, their setting; on by default for MMVAE variants: "
                           "with one IWAE over all samples one expert collapses, reports/diagnosis)",
                           default_for=_supports_looser)
    tight_after: int | None = setting(None, "MMVAE with the looser bound: train the tight bound (one IWAE over all "
                                      "samples) from this optimiser step on; the looser warm-up keeps an expert "
                                      "from collapsing, the tight bound then trains each decoder on the partner's "
                                      "samples that explain its modality (reports/diagnosis H13)",
                                      V.positive_int, safe_on_resume=True)
    tight_gamma: float | None = setting(None, "contrastive variants: gamma from tight_after on (None: gamma); under "
                                        "the tight bound gamma=2's term 2 keeps the SVHN decoder from rendering "
                                        "MNIST latents, gamma=4 does not (reports/diagnosis H15)",
                                        V.gamma_value, safe_on_resume=True)
    tight_K: int | None = setting(None, "importance samples from tight_after on (None: K); e.g. a K=2 looser "
                                  "warm-up, then a K=10 tight phase (reports/diagnosis H19)", V.positive_int, safe_on_resume=True)

    def validate(self) -> None:
        _check_fields(self)
        if self.tight_after is not None and not self.looser:
            raise ConfigError(f"tight_after={self.tight_after} switches the looser bound to the tight one, "
                              "but this run trains the tight bound from the start (looser is off)")
        for name in ("tight_gamma", "tight_K"):
            if getattr(self, name) is not None and self.tight_after is None:
                raise ConfigError(f"{name}={getattr(self, name)} is a setting of the tight phase, but this run "
                                  "has none (set tight_after)")

    def describe(self) -> str:
        """The objective in one line for people (the Compare page): samples, bound and its phases, and
        eq. (4)'s settings for the contrastive variants."""
        parts = [f"K={self.K}"] + (["DReG"] if self.dreg else [])
        if self.tight_after is not None:
            tight = "tight" if self.tight_K is None else f"tight at K={self.tight_K}"
            parts.append(f"looser bound to step {self.tight_after:,}, then {tight}")
        elif self.looser:
            parts.append("looser bound")
        if self.contrastive is not None and not math.isinf(self.gamma):
            gamma = f"γ={self.gamma:g}"
            if self.tight_gamma is not None and self.tight_after is not None:
                gamma += f" ({self.tight_gamma:g} from step {self.tight_after:,})"
            parts.append(f"eq. (4) {gamma}, N={self.N}, term 2 by {self.contrastive.upper()}")
        return ", ".join(parts)

    def at_step(self, step: int) -> "ObjectiveConfig":
        """The objective trained at optimiser step ``step`` (0-based): ``tight_after`` turns the looser
        bound off from that step on, and ``tight_gamma`` / ``tight_K`` (if set) replace gamma / K there."""
        if self.tight_after is not None and step >= self.tight_after:
            gamma = self.gamma if self.tight_gamma is None else self.tight_gamma
            K = self.K if self.tight_K is None else self.tight_K
            return dataclasses.replace(self, looser=False, tight_after=None, gamma=gamma, tight_gamma=None,
                                       K=K, tight_K=None)
        return self


@dataclass
class TrainConfig:
    """The optimisation loop."""

    epochs: int = setting(10, "training epochs", V.positive_int, safe_on_resume=True)
    max_steps: int | None = setting(None, "stop after this many optimiser steps", V.positive_int,
                                    safe_on_resume=True)
    batch_size: int = setting(128, "pairs per batch", V.positive_int)
    lr: float = setting(1e-3, "Adam learning rate", V.positive_float)
    seed: int = setting(0, "seed of the pairing, the data and the training", V.integer, flag="--seed")
    device: str = setting("auto", "device", V.one_of(V.DEVICES), safe_on_resume=True)
    max_nonfinite: int = setting(10, "stop after this many non-finite losses in a row", V.positive_int,
                                 safe_on_resume=True)
    k_chunk: int | None = setting(None, "evaluate the K samples in chunks of this size: flat peak memory, same "
                                  "result", V.positive_int, safe_on_resume=True)
    precision: str = setting("fp32", "bf16: encoders and decoders under bf16 autocast (CPU with AVX-512 BF16 or "
                             "AMX, CUDA); likelihoods, log weights and the optimiser stay fp32",
                             V.one_of(PRECISIONS), safe_on_resume=True)
    checkpoint_every: int = setting(500, "save checkpoint.pt every this many steps", V.positive_int,
                                    safe_on_resume=True)
    checkpoint_minutes: float = setting(10.0, "also save when this many minutes passed since the last save "
                                        "(inf: never)", V.positive_or_inf, safe_on_resume=True)
    divergence_tolerance: float = setting(1.0, "stop when the held-out IWAE falls more than this times |best| "
                                          "below the best (1: twice as bad; inf: never)", V.positive_or_inf,
                                          safe_on_resume=True)

    def validate(self) -> None:
        _check_fields(self)


@dataclass
class RunConfig:
    """Everything needed to rebuild and retrain a run."""

    variant: str = setting("MMVAE", "variant, case-insensitive: MMVAE, cI-MMVAE, cC-MMVAE, MVAE, cI-MVAE, "
                           "cC-MVAE, JMVAE, cI-JMVAE, cC-JMVAE", V.variant, flag="--model")
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
        # Imported here: engine.checkpoints imports torch, and reading or writing configs stays torch-free.
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




def _check_fields(part) -> None:
    """Run each field's check on its value (None is fine where the field's default is None)."""
    for f in dataclasses.fields(part):
        check, value = f.metadata.get("check"), getattr(part, f.name)
        if check is None or (value is None and f.default is None):
            continue
        try:
            check(value)
        except ValueError as e:
            raise ConfigError(f"{f.name} {e}") from None


# ---- the schema -------------------------------------------------------------------------------
def settings() -> dict[str, dataclasses.Field]:
    """Every setting of a RunConfig by dotted name ('variant', 'objective.K', ...), in field order."""
    hints = typing.get_type_hints(RunConfig)
    out = {"variant": next(f for f in dataclasses.fields(RunConfig) if f.name == "variant")}
    for section in SECTIONS:
        out.update({f"{section}.{f.name}": f for f in dataclasses.fields(hints[section])})
    return out


def flag_of(name: str) -> str | None:
    """The command-line flag of a setting ('train.max_steps' -> '--max-steps'); None if it has none."""
    f = settings()[name]
    flag = f.metadata["flag"]
    return flag or (None if flag is None else "--" + f.name.replace("_", "-"))


def get_setting(cfg: RunConfig, name: str) -> Any:
    section, _, key = name.rpartition(".")
    return getattr(getattr(cfg, section) if section else cfg, key)


def set_setting(cfg: RunConfig, name: str, value: Any) -> None:
    section, _, key = name.rpartition(".")
    setattr(getattr(cfg, section) if section else cfg, key, value)


def flat(cfg: RunConfig) -> dict[str, Any]:
    """Every setting of ``cfg`` by dotted name ('objective.K': 30)."""
    return {name: get_setting(cfg, name) for name in settings()}


def marked(key: str) -> tuple[str, ...]:
    """The settings whose metadata ``key`` is true ('safe_on_resume', 'derived')."""
    return tuple(n for n, f in settings().items() if f.metadata[key])

# Named partial configs (dotted setting -> value): the one preset system, used by
# ``train --preset``, reproduce, propagate and checkpoints/make.sh.
PRESETS: dict[str, dict[str, Any]] = {
    # reproduce: the paper's Table 1 settings (30 epochs: Shi et al. 2019's MNIST-SVHN setting) and the
    # 2-core CPU cut (see engine.reproduce.cpu_preset for the reasons)
    "reproduce-paper": {"train.epochs": 30},
    "reproduce-cpu": {"objective.K": 2, "objective.N": 2, "data.dm": 5, "train.epochs": 100,
                      "train.max_steps": 3000, "train.batch_size": 32, "model.learn_prior": True,
                      "train.precision": "bf16"},
    # propagate: the paper's §4 settings, and a small one (10% of each set, dm 5 -> 10k pairs, K 5, 120 steps)
    "propagate-paper": {"data.data_fraction": 1.0, "data.dm": 30, "objective.K": 30, "objective.N": 5,
                        "train.epochs": 10, "train.max_steps": None, "train.batch_size": 128},
    "propagate-cpu": {"data.data_fraction": 0.1, "data.dm": 5, "objective.K": 5, "objective.N": 5,
                      "train.epochs": 10, "train.max_steps": 120, "train.batch_size": 32},
    # the shipped checkpoints (checkpoints/make.sh; all MMVAE variants, so all of them, take the looser bound;
    # tight_gamma applies to the contrastive ones only, reports/diagnosis H15)
    "shipped-mnist-svhn": {"train.batch_size": 32, "objective.K": 2, "objective.N": 5, "objective.gamma": 2.0,
                           "train.lr": 1e-3, "model.learn_prior": True, "train.seed": 0, "data.seed": 0,
                           "train.epochs": 100, "data.dm": 2, "train.max_steps": 70000,
                           "objective.tight_after": 60000, "objective.tight_gamma": 4.0,
                           "train.precision": "bf16"},
    "shipped-cub-synthetic": {"train.batch_size": 32, "objective.K": 2, "objective.N": 5, "objective.gamma": 2.0,
                              "train.lr": 1e-3, "model.learn_prior": True, "train.seed": 0, "data.seed": 0,
                              "train.epochs": 100, "train.max_steps": 20000,
                              "train.precision": "bf16", "model.likelihood_weights": "0.025,5"},
}


def preset_settings(preset: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The partial config a preset name (or a partial config itself, or None) stands for."""
    if preset is None:
        return {}
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        return dict(PRESETS[preset])
    return dict(preset)


def resolve(preset: str | Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None,
            dataset: str | None = None, base: RunConfig | None = None) -> RunConfig:
    """The validated RunConfig: ``base`` (default: the defaults plus the dataset-dependent defaults of
    the settings nobody chose), then the preset, then ``dataset``, then ``overrides`` (dotted names).
    The family and contrastive estimator follow the variant."""
    partial = {**preset_settings(preset), **({"data.dataset": dataset} if dataset else {}), **(overrides or {})}
    known = settings()
    unknown = sorted(set(partial) - set(known))
    if unknown:
        raise ConfigError(f"unknown settings {unknown}; expected dotted names such as objective.K")
    cfg = copy.deepcopy(base) if base is not None else RunConfig()
    for name, value in partial.items():
        set_setting(cfg, name, value)
    if base is None:
        for name, f in known.items():
            if f.metadata["default_for"] is not None and name not in partial:
                set_setting(cfg, name, f.metadata["default_for"](cfg))
    family, contrastive = parse_variant(cfg.variant)
    cfg.variant, cfg.model.family, cfg.objective.contrastive = variant_name(family, contrastive), family, contrastive
    return cfg.validate()


def resume_config(saved: RunConfig, cfg: RunConfig, given: dict[str, str] | None,
                  path) -> tuple[RunConfig, list[str]]:
    """The config a resumed run continues with, and the changes applied to it.

    ``given`` maps the settings the caller chose (dotted names) to how to call them in messages
    (the CLI passes the flags typed on its command line); None means every setting of ``cfg``.
    Settings marked ``safe_on_resume`` that differ are merged into ``saved`` (``resolve``); any
    other that differs is a conflict, and all conflicts are refused together (ConfigError).
    """
    old, new, safe = flat(saved), flat(cfg), marked("safe_on_resume")
    names = given if given is not None else {k: k for k in new if k not in marked("derived")}
    conflicts, changes, merged = {}, {}, {}
    for key, label in names.items():
        if old[key] == new[key]:
            continue
        if key in safe:
            merged[key] = new[key]
            changes.setdefault(label, f"{label} {new[key]} (was {old[key]})")
        else:
            conflicts.setdefault(label, f"{label} {new[key]} (the run has {old[key]})")
    if conflicts:
        raise ConfigError(f"--resume continues {path} with its own settings, and these differ from them: "
                          f"{'; '.join(conflicts.values())}. Drop them to continue, or train into a new --out "
                          f"(safe to change on resume: {', '.join(k.split('.')[1] for k in safe)})")
    return resolve(overrides=merged, base=saved), list(changes.values())
