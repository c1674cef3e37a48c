"""SVHN digits: the offline synthetic renderer by default, or the real torchvision set."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from engine.data.mnist import _failure, _real_root, load_from_source
from engine.data.synth_svhn import load_svhn_synthetic
from engine.errors import DataError
from engine.progress import ProgressArg


def load_svhn(split: str, source: str = "offline", root: str | None = None,
              download: bool = False, progress: ProgressArg = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Load SVHN as float32 images (N,3,32,32) in [0,1] and int64 labels (N,) in 0..9.

    Results are memoised per argument tuple (``progress`` aside: it only hears of an offline render);
    treat the returned tensors as read-only.
    """
    return load_from_source(split, source, root, download, lambda s: _offline(s, progress), _real)


def _to_tensors(images: np.ndarray, labels: np.ndarray, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images -> float32 (N,3,32,32) in [0,1]; labels -> int64."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    if channels_last:
        x = x.permute(0, 3, 1, 2)
    return (x.to(torch.float32) / 255.0).contiguous(), torch.from_numpy(np.asarray(labels, dtype=np.int64))


_OFFLINE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def _offline(split: str, progress: ProgressArg) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered house-number crops at the default sizes, memoised per split (cached on disk too)."""
    if split not in _OFFLINE:
        _OFFLINE[split] = _to_tensors(*load_svhn_synthetic(split, progress=progress), channels_last=True)
    return _OFFLINE[split]


@lru_cache(maxsize=None)
def _real(split: str, root: str | None, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's SVHN (cropped digits, .mat files read with scipy); label 10 is already 0."""
    import torchvision      # ~4 s to import: only the real source needs it

    base = _real_root(root, download, "SVHN", "<root>/train_32x32.mat and <root>/test_32x32.mat")
    expected = base / f"{split}_32x32.mat"
    if not download and not expected.is_file():
        raise DataError(
            f"real SVHN file not found: expected {expected} (layout <root>/train_32x32.mat, "
            "<root>/test_32x32.mat; torchvision reads them with scipy, which must be installed). "
            "Pass --download to fetch them (needs internet), or use --source offline."
        )
    try:
        ds = torchvision.datasets.SVHN(str(base), split=split, download=download)
    except ImportError as e:
        raise DataError(f"reading SVHN .mat files needs scipy (pip install scipy): {e}") from e
    except Exception as e:  # RuntimeError for a corrupt/failed file, URLError/OSError for the network
        raise DataError(_failure("SVHN", base, download, e)) from e
    return _to_tensors(ds.data, ds.labels, channels_last=False)
