"""Shared fixtures: keep generated data in a per-session cache, small thread counts."""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def _cache_env(tmp_path_factory):
    """Use the user's cache if set (CI sets it), else a session temp dir."""
    if "CMVAE_CACHE" not in os.environ:
        os.environ["CMVAE_CACHE"] = str(tmp_path_factory.mktemp("cmvae-cache"))
    yield
