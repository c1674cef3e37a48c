"""Helpers for the dashboard tests: a checkpoint root of tiny runs, and an AppTest factory."""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "streamlit_app.py"
PAGES = ("models", "generations", "relatedness", "retrieval", "score", "train", "compare")


_BUILT: dict[str, dict[str, str]] = {}


def build_root(tmp_path_factory) -> dict[str, str]:
    """checkpoints/ with tiny MMVAE and cI-MMVAE runs (3 steps; PMI arrays written by the engine,
    a small metrics.json), one corrupt run, an empty runs/, and reports/relatedness/ with one
    propagation report. Built once per test process; returns the CMVAE_* environment."""
    if "env" in _BUILT:
        return _BUILT["env"]
    import torch

    from engine import load
    from engine.registry import build_data
    from engine.relatedness import evaluate_relatedness
    from engine.train import train
    from tests.conftest import tiny_config

    torch.set_num_threads(2)
    base = tmp_path_factory.mktemp("dashboard")
    ck, runs, reports = base / "checkpoints", base / "runs", base / "reports" / "relatedness"
    for p in (ck, runs, reports):
        p.mkdir(parents=True, exist_ok=True)
    data = None
    for i, variant in enumerate(("MMVAE", "cI-MMVAE")):
        cfg = tiny_config(variant)
        data = data or build_data(cfg.data)
        dst = ck / variant
        train(cfg, dst, progress=False, data=data)
        res = evaluate_relatedness(load(dst, "cpu"), data, n_pairs=80, K=2, seed=0, progress=False)
        np.save(dst / "pmi_related.npy", res["pmi_related"])
        np.save(dst / "pmi_unrelated.npy", res["pmi_unrelated"])
        (dst / "metrics.json").write_text(json.dumps({"coherence": {"joint": 0.1 + i / 10, "mnist_to_svhn": 0.2},
                                                      "relatedness": {"auc": res["auc"]}}))
    bad = ck / "corrupt"
    bad.mkdir()
    shutil.copy(ck / "MMVAE" / "config.json", bad / "config.json")
    (bad / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (reports / "propagation.json").write_text(json.dumps({"Fr": {"accuracy": 0.8}, "Sr": {"accuracy": 0.7}}))
    _BUILT["env"] = {"CMVAE_CHECKPOINTS": str(ck), "CMVAE_RUNS": str(runs), "CMVAE_REPORTS": str(base / "reports")}
    return _BUILT["env"]


@contextmanager
def environ(values: dict[str, str]):
    """Temporarily set environment variables (AppTest runs the app in this process)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def app(page: str | None = None, query: dict | None = None, timeout: float = 120):
    """An AppTest of the dashboard, run once and switched to ``page`` (and run again)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=timeout)
    at.query_params.update(query or {})
    at.run()
    if page:
        at.switch_page(f"dashboard/pages/{page}.py").run()
    return at


def problems(at) -> list[str]:
    """Exceptions rendered by the app (each would be a crash in the browser)."""
    return [e.value for e in at.exception]


def metric_values(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}
