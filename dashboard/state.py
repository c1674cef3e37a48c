"""Cached loaders around engine calls: models once per process, arrays once per argument set.

Keys include the checkpoint's mtime, so a retrained run (same path) is reloaded. Engine modules
that import torch are imported inside the functions: importing this module stays torch-free (torch
takes ~2 s; a page's form shows before it), and a page can tell whether an engine feature exists
with ``engine_feature``.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import streamlit as st

import engine
from dashboard import logic
from dashboard.runs import read_json
from engine import registry, thresholds
from engine.config import DataConfig


def device() -> str:
    return os.environ.get("CMVAE_DEVICE", "auto")


def engine_feature(module: str, *names: str):
    """The engine module ``engine.<module>`` if it exists and defines ``names``; else None."""
    full = f"engine.{module}"
    try:
        if importlib.util.find_spec(full) is None:
            return None
        mod = importlib.import_module(full)
    except ImportError:
        return None
    return mod if all(hasattr(mod, n) for n in names) else None


@st.cache_resource(show_spinner=False, max_entries=8)
def load_model(path: str, mtime: float):
    """engine.load(path) once per (path, mtime) per process.

    Also sets one intra-op torch thread for the process (before any model computes): interactive
    queries are small, and on a 2-core CPU shared with training, 2 threads made a caption → image
    query ~24x slower (oversubscription: 236 vs 10 ms median on the offline synthetic CUB).
    """
    import torch        # torch-free until a model is loaded (see the module docstring)

    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    return engine.load(path, device=device())


SPLITS = ("train", "test")
_BUILT: set[tuple[str, tuple[str, ...]]] = set()     # (config, splits) built with progress in this process


@st.cache_resource(show_spinner=False, max_entries=4)
def load_data(data_config_json: str, splits: tuple[str, ...] = SPLITS, _built=None):
    """The dataset a run was trained on (engine.registry.build_data), once per config and splits.

    ``_built`` is data the caller has just built with its progress shown (``build_data``): it becomes
    the entry, so the build never runs inside this cached function, whose elements would be replayed.
    """
    if _built is not None:
        return _built
    return registry.build_data(DataConfig(**json.loads(data_config_json)), progress=False, splits=splits)


def data_key(data_config: dict) -> str:
    """The cache key of a data config (a run's config.json "data" or a DataConfig as a dict),
    normalised through DataConfig so both spell it the same."""
    return json.dumps(dataclasses.asdict(DataConfig(**data_config)), sort_keys=True)


def is_built(data_config: dict, splits: tuple[str, ...]) -> bool:
    """Whether this process already holds the data (so a page needs no progress display)."""
    return (data_key(data_config), splits) in _BUILT


def build_data(data_config: dict, splits: tuple[str, ...], progress):
    """Build the data (drawing, rendering, featurising what the disk caches lack) reporting to
    ``progress(done, total, what)``, and keep it as ``load_data``'s entry."""
    data = registry.build_data(DataConfig(**data_config), progress=progress, splits=splits)
    _BUILT.add((data_key(data_config), splits))
    return load_data(data_key(data_config), splits, _built=data)


def data_for(model, splits: tuple[str, ...] = SPLITS):
    """The (cached) data of a loaded model's config, for ``splits``."""
    return load_data(data_key(dataclasses.asdict(model.config.data)), splits)


@st.cache_data(show_spinner=False, max_entries=32)
def read_pmi(path: str, mtime: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(pmi_related, pmi_unrelated) saved in a run folder, or None if either file is missing."""
    rel, unrel = Path(path) / "pmi_related.npy", Path(path) / "pmi_unrelated.npy"
    if not (rel.is_file() and unrel.is_file()):
        return None
    return np.load(rel, allow_pickle=False), np.load(unrel, allow_pickle=False)


@st.cache_data(show_spinner=False, max_entries=16)
def compute_relatedness(path: str, mtime: float, n_pairs: int, K: int, seed: int) -> dict:
    """engine.relatedness.evaluate_relatedness on the run's test pairs (cached per arguments)."""
    from engine.relatedness import evaluate_relatedness     # torch (see the module docstring)

    model = load_model(path, mtime)
    return evaluate_relatedness(model, data_for(model, ("test",)), n_pairs=n_pairs, K=K, seed=seed)


@st.cache_data(show_spinner=False, max_entries=64)
def fit_threshold(scores: np.ndarray, labels: np.ndarray, criterion: str = "f1") -> tuple[float, dict]:
    t, info = thresholds.fit_threshold(scores, labels, criterion=criterion)
    return float(t), dict(info or {})


@st.cache_data(show_spinner=False, max_entries=64)
def generations(path: str, mtime: float, mode: str, n: int, seed: int) -> dict:
    """engine.generate.generations for one run (arrays cached per mode, n and seed)."""
    from engine.generate import generations as gen          # torch (see the module docstring)

    model = load_model(path, mtime)
    return gen(model, data_for(model, ("test",)), mode, n, seed)


@st.cache_data(show_spinner=False, max_entries=64)
def cub_generations(path: str, mtime: float, mode: str, n: int, seed: int, decoding: str) -> dict:
    """engine.captions.cub_generations for one CUB run: caption text and nearest-train-image paths."""
    from engine.captions import cub_generations as gen      # torch (see the module docstring)

    model = load_model(path, mtime)
    return gen(model, data_for(model), mode, n=n, seed=seed, decoding=decoding)


@st.cache_data(show_spinner=False, max_entries=32)
def read_metrics(path: str, mtime: float) -> list[dict]:
    """engine.train.read_metrics (the per-epoch lines of metrics.jsonl)."""
    from engine.train import read_metrics as rm             # torch (see the module docstring)

    return rm(path)


def metrics_json(path: str | Path) -> dict | None:
    """A run's evaluation results (metrics.json) or None; ValueError if malformed."""
    return read_json(Path(path) / "metrics.json")


@st.cache_data(show_spinner=False, max_entries=64)
def roc_pr(scores: np.ndarray, labels: np.ndarray) -> dict:
    """ROC and PR curves of one score set (cached: threshold moves never recompute them)."""
    return logic.roc_pr_curves(scores, labels)
