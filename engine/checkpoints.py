"""Checkpoints: atomic saves, safe loads (weights_only), a format version and clear errors.

A checkpoint file holds the model's state, the optimiser's state, progress counters, RNG states
and the full RunConfig as a dict, so the file alone rebuilds its model. A run directory holds
``checkpoint.pt`` (the latest state, what ``--resume`` continues) and ``best.pt`` (the same layout,
at the best held-out IWAE so far); reading a run directory means its best.pt where there is one.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from engine.config import RunConfig
from engine.errors import CheckpointError, ConfigError

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
TEMP_GLOB = ".*.tmp"          # what _atomic's temporary files look like (hidden, in the target's folder)


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy a file so that readers see the old ``dst`` or the whole new one."""
    _atomic(Path(dst), lambda f: f.write(Path(src).read_bytes()))


def clean_stale_temps(folder: Path) -> list[Path]:
    """Delete temporary files that interrupted atomic writes left in ``folder``; the deleted paths."""
    stale = [p for p in Path(folder).glob(TEMP_GLOB) if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: Path, text: str) -> None:
    """Write text so that readers see the old file or the new one, never half of one."""
    _atomic(Path(path), lambda f: f.write(text.encode()))


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file and os.replace."""
    _atomic(Path(path), lambda f: torch.save(obj, f))


def save_checkpoint(path: Path, cfg: RunConfig, model: torch.nn.Module, optimizer=None,
                    **state: Any) -> None:
    """Save model (+ optimiser, counters, RNG states) with the config embedded."""
    payload = {"format_version": FORMAT_VERSION, "config": cfg.to_dict(),
               "model": model.state_dict(), **state}
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    atomic_save(payload, Path(path))


def resolve(path: str | Path) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file (a directory's best.pt if it has one)."""
    p = Path(path)
    if p.is_dir():
        p = p / BEST_NAME if (p / BEST_NAME).is_file() else p / CHECKPOINT_NAME
    if not p.is_file():
        raise CheckpointError(f"no checkpoint at {path} (expected a run directory holding {CHECKPOINT_NAME}, or the file)")
    return p


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint dict safely, turning torch's failures into a clear CheckpointError."""
    p = resolve(path)
    try:
        ck = torch.load(p, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError, KeyError,
            IndexError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{p} is not a readable checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {e}") from e
    if not isinstance(ck, dict) or "format_version" not in ck:
        raise CheckpointError(f"{p} is not a checkpoint written by this engine (no format_version)")
    if ck["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{p} has checkpoint format version {ck['format_version']}; "
                              f"this engine reads version {FORMAT_VERSION}")
    for key in ("config", "model"):
        if key not in ck:
            raise CheckpointError(f"{p} lacks its '{key}' entry")
    if not isinstance(ck["model"], dict) or not all(isinstance(v, torch.Tensor) for v in ck["model"].values()):
        raise CheckpointError(f"{p}: its 'model' entry is not a state dict (name -> tensor)")
    return ck


def config_of(ck: dict, path: Any = "checkpoint") -> RunConfig:
    """The checkpoint's embedded RunConfig, validated (CheckpointError naming the file if not)."""
    try:
        cfg = RunConfig.from_dict(ck["config"]).validate()
    except ConfigError as e:
        raise CheckpointError(f"{path}: its embedded config is invalid: {e}") from e
    if cfg.data.dataset != "mnist-svhn" and min(cfg.model.vocab_size, cfg.model.feature_dim) < 1:
        raise CheckpointError(f"{path}: its config names dataset {cfg.data.dataset!r} but holds no caption "
                              "vocabulary size or feature width (is it a checkpoint of another dataset?)")
    return cfg


def nonfinite_tensors(state: dict) -> list[str]:
    """Names of the floating-point tensors in a state dict that hold NaN or inf."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def load_state(model: torch.nn.Module, state: dict, path: Any = "checkpoint") -> None:
    """load_state_dict(strict) with a message that names what does not fit; non-finite weights are refused."""
    bad = nonfinite_tensors(state)
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights (NaN or inf in {len(bad)} tensors, e.g. "
                              f"{bad[:3]}): the run diverged; use its {BEST_NAME} or retrain")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        if wrong:
            parts.append("shape mismatch " + ", ".join(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                       for k in wrong[:5]))
        raise CheckpointError(f"{path}: the saved weights do not fit the model its config describes: "
                              + "; ".join(parts))
    model.load_state_dict(state)


def export_checkpoint(run_dir: str | Path, out_dir: str | Path, half: bool = True) -> Path:
    """Write an inference-only copy of a run: model weights (fp16 by default), config and the
    run's text records, without optimiser or RNG state. ``engine.load`` reads it; it cannot be
    resumed. Used for the shipped checkpoints, which must stay small."""
    src = resolve(run_dir)
    ck = read_checkpoint(src)
    state = {k: v.half() if half and v.is_floating_point() else v for k, v in ck["model"].items()}
    out = Path(out_dir)
    payload = {"format_version": FORMAT_VERSION, "config": ck["config"], "model": state,
               "epoch": ck.get("epoch", 0), "step": ck.get("step", 0), "exported": True}
    atomic_save(payload, out / CHECKPOINT_NAME)
    for name in ("config.json", "metrics.jsonl", "metrics.json", "relatedness.json", "pmi_related.npy",
                 "pmi_unrelated.npy"):
        f = src.parent / name
        if f.exists() and f.resolve() != (out / name).resolve():
            _atomic(out / name, lambda fh, f=f: fh.write(f.read_bytes()))
    return out / CHECKPOINT_NAME
