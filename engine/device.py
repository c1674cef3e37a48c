"""Pick the compute device once (CUDA, then MPS, then CPU) and pass it down."""
from __future__ import annotations

import torch

from engine.errors import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    """'auto' prefers CUDA, then Apple MPS, then CPU; an explicit choice must be available."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available; use --device auto or cpu")
    if name == "mps" and not has_mps:
        raise ConfigError("device 'mps' requested but MPS is not available; use --device auto or cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device must be one of auto, cpu, cuda, mps; got {name!r}")
    return torch.device(name)
