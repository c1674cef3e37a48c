"""Siamese relatedness baseline (Hadsell et al. 2006), as in paper §4.5 / Figure 8f.

Two modality encoders (fresh copies of the VAE's encoder architectures, loc head only) map x and
y into one embedding space; the contrastive margin loss pulls related pairs together and pushes
unrelated ones at least ``margin`` apart:
    L = r d^2 / 2 + (1 - r) max(0, margin - d)^2 / 2,   d = ||f(x) - g(y)||_2.
Training pairs are the related pairs of Sr and in-batch re-matchings of them, labelled related
iff their labels agree. A pair's relatedness score is -d, so "score >= threshold" means related,
as for PMI.
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from engine.checkpoints import atomic_save
from engine.device import pick_device
from engine.errors import CheckpointError, ConfigError, DataError
from engine.models.modalities import build_modalities

FORMAT_VERSION = 1
KIND = "siamese"


@dataclass
class SiameseConfig:
    """Architecture and training of the baseline."""

    dataset: str = "mnist-svhn"
    embed_dim: int = 20
    margin: float = 1.0
    steps: int = 500
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    vocab_size: int = 0       # CUB captions (from the data)
    feature_dim: int = 0      # CUB image features (from the data)

    def validate(self) -> "SiameseConfig":
        for name in ("embed_dim", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"siamese {name} must be >= 1, got {getattr(self, name)}")
        if not self.margin > 0 or not self.lr > 0:
            raise ConfigError(f"siamese margin and lr must be > 0, got {self.margin}, {self.lr}")
        return self


class Siamese(nn.Module):
    """Two encoders into one embedding; ``distance`` and ``score`` per pair."""

    def __init__(self, cfg: SiameseConfig):
        super().__init__()
        self.config = cfg
        self.mods = nn.ModuleList(build_modalities(cfg.dataset, cfg.embed_dim, cfg.vocab_size, cfg.feature_dim))
        for mod in self.mods:      # only the encoders are used
            mod.decoder = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def embed(self, m: int, x: torch.Tensor) -> torch.Tensor:
        return self.mods[m].encode(x)[0]

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.embed(0, x) - self.embed(1, y)).norm(dim=-1)

    @torch.inference_mode()
    def score(self, xs: torch.Tensor, ys: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Relatedness score -d for every pair (xs[i], ys[i])."""
        if len(xs) != len(ys):
            raise DataError(f"need as many x as y items, got {len(xs)} and {len(ys)}")
        self.eval()
        out = [-self.distance(xs[a:a + batch_size].to(self.device), ys[a:a + batch_size].to(self.device))
               for a in range(0, len(xs), batch_size)]
        return torch.cat(out).double().cpu().numpy()


def contrastive_margin_loss(d: torch.Tensor, related: torch.Tensor, margin: float) -> torch.Tensor:
    """Hadsell et al. (2006) eq. (4), per pair: r d^2/2 + (1 - r) max(0, m - d)^2/2."""
    r = related.to(d.dtype)
    return 0.5 * (r * d.pow(2) + (1 - r) * (margin - d).clamp(min=0).pow(2))


def train_siamese(cfg: SiameseConfig, pairs, progress: bool = True) -> Siamese:
    """Train on a PairedDataset of related pairs (Sr): each batch adds a random re-matching of
    its own items as further pairs, labelled related iff their labels agree."""
    cfg.validate()
    if len(pairs) < 2:
        raise DataError("the siamese baseline needs at least two related pairs")
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    model = Siamese(cfg).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    bs = min(cfg.batch_size, len(pairs))
    for _ in tqdm(range(cfg.steps), disable=not progress, desc="siamese", unit="step"):
        (x, y), labels = pairs.batch(torch.randperm(len(pairs), generator=gen)[:bs])
        perm = torch.randperm(bs, generator=gen)
        x, y = x.to(device), y.to(device)
        ex, ey = model.embed(0, x), model.embed(1, y)
        d = torch.cat([(ex - ey).norm(dim=-1), (ex - ey[perm.to(device)]).norm(dim=-1)])
        related = torch.cat([torch.ones(bs, dtype=torch.bool), labels == labels[perm]]).to(device)
        loss = contrastive_margin_loss(d, related, cfg.margin).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def save_siamese(model: Siamese, path: str | Path) -> Path:
    """Atomic save of weights and config."""
    path = Path(path)
    atomic_save({"format_version": FORMAT_VERSION, "kind": KIND, "config": asdict(model.config),
                 "model": model.state_dict()}, path)
    return path


def load_siamese(path: str | Path, device: str = "auto") -> Siamese:
    """Rebuild a saved baseline (weights_only load; clear errors for foreign or broken files)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no siamese checkpoint at {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {e}") from e
    if not isinstance(ck, dict) or ck.get("kind") != KIND or ck.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a siamese checkpoint of format version {FORMAT_VERSION}")
    try:
        model = Siamese(SiameseConfig(**ck["config"]).validate())
        model.load_state_dict(ck["model"])
    except (TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: weights or config do not fit the siamese model: {e}") from e
    return model.to(pick_device(device)).eval()


__all__ = ["SiameseConfig", "Siamese", "contrastive_margin_loss", "train_siamese", "save_siamese", "load_siamese"]
