"""Where derived data (rendered synthetic sets, downloads without a root) is cached.

The cache lives outside the git tree so generated arrays are never committed.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Return the cache folder: ``$CMVAE_CACHE`` if set, else ``~/.cache/cmvae``; created on demand."""
    env = os.environ.get("CMVAE_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "cmvae"
    path.mkdir(parents=True, exist_ok=True)
    return path
