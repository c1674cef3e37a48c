"""Shared fixtures: keep generated data in a per-session cache, small thread counts."""
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def _cache_env(tmp_path_factory):
    """Use the user's cache if set (CI sets it), else a session temp dir."""
    if "CMVAE_CACHE" not in os.environ:
        os.environ["CMVAE_CACHE"] = str(tmp_path_factory.mktemp("cmvae-cache"))
    yield


def tiny_config(variant: str = "cI-MMVAE", dataset: str = "mnist-svhn", **train):
    """A run config small enough to train in seconds on a CPU (tests only)."""
    from engine.config import DataConfig, ObjectiveConfig, RunConfig, TrainConfig

    t = TrainConfig(epochs=1, max_steps=train.pop("max_steps", 3), batch_size=train.pop("batch_size", 16),
                    device="cpu", **train)
    return RunConfig(variant=variant, data=DataConfig(dataset=dataset, data_fraction=0.1, dm=2),
                     objective=ObjectiveConfig(K=2, N=2), train=t)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """Factory: train (once per variant/dataset) a few steps and return the run directory."""
    from engine.train import train

    made = {}

    def make(variant: str = "cI-MMVAE", dataset: str = "mnist-svhn") -> Path:
        key = (variant, dataset)
        if key not in made:
            out = tmp_path_factory.mktemp(f"run-{variant}-{dataset}")
            train(tiny_config(variant, dataset), out, progress=False)
            made[key] = out
        return made[key]

    return make
