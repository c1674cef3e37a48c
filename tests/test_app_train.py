"""AppTest: the Train page starts a background run, refuses a second one, cancels, and the run
lands in the checkpoint picker."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from dashboard import jobs
from dashboard.runs import find_runs
from engine.config import RunConfig
from tests.dashboard_common import app, environ, problems

pytest.importorskip("streamlit.testing.v1")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Empty checkpoint and runs roots: the Train page needs no trained model."""
    base = tmp_path_factory.mktemp("dash-train")
    env = {"CMVAE_CHECKPOINTS": str(base / "checkpoints"), "CMVAE_RUNS": str(base / "runs")}
    (base / "runs").mkdir()
    with environ(env):
        yield env


def test_training_runs_are_refused_while_one_runs_and_can_be_cancelled(root):
    runs = Path(root["CMVAE_RUNS"])
    sleeper = jobs.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], runs)
    try:
        at = app("train")
        at.text_input(key="tr_name").set_value("second")
        at.form_submit_button[0].click().run()
        assert problems(at) == []
        assert any("still running" in w.value for w in at.warning)
        assert not (runs / "second").exists()
        assert any(b.label == "Cancel run" for b in at.button)
        at.button(key="tr_cancel").click().run()
        assert not jobs.is_alive(sleeper.pid)
        assert any("stopped" in e.value or "Cancelled" in e.value for e in [*at.error, *at.info])
    finally:
        jobs.cancel(runs, wait=1)


def test_train_page_starts_a_run_that_lands_in_the_picker(root):
    runs = Path(root["CMVAE_RUNS"])
    at = app("train")
    for key, value in (("tr_name", "dash-run"), ("tr_steps", 2), ("tr_K", 2), ("tr_N", 2), ("tr_batch", 16),
                       ("tr_fraction", 0.05)):
        (at.text_input(key=key) if key == "tr_name" else at.number_input(key=key) if key != "tr_fraction"
         else at.slider(key=key)).set_value(value)
    at.form_submit_button[0].click().run()
    assert problems(at) == [] and not at.error
    job = jobs.last_job(runs)
    assert job.name == "dash-run" and "--max-steps" not in job.argv          # the settings travel in a file
    config = Path(job.argv[job.argv.index("--config") + 1])
    assert config == runs / "dash-run" / "config.json" and job.argv[job.argv.index("--out") + 1] == str(job.out)
    deadline = time.time() + 120
    while jobs.status(job) == "running" and time.time() < deadline:
        time.sleep(0.5)
    assert jobs.status(job) == "done", jobs.log_tail(job)
    cfg = RunConfig.load(config)
    assert (cfg.variant, cfg.train.max_steps, cfg.objective.K, cfg.objective.N, cfg.train.batch_size,
            cfg.data.data_fraction) == ("cI-MMVAE", 2, 2, 2, 16, 0.05)
    assert jobs.progress(job)["step"] == 2                                  # and the trainer trained it
    assert any(r.name == "dash-run" and not r.problem for r in find_runs())
    again = app("train")
    again.text_input(key="tr_name").set_value("dash-run")
    again.form_submit_button[0].click().run()
    assert any("already exists" in e.value for e in again.error)


def test_data_root_is_asked_for_cub_and_the_real_source_only(root, monkeypatch):
    started, configs = [], []

    def fake_start(name, argv, runs_root, config=None):
        started.append(argv)
        configs.append(config)
        return jobs.Job(0, name, Path(runs_root) / name, argv, 0.0)

    monkeypatch.setattr(jobs, "start", fake_start)
    monkeypatch.setattr(jobs, "active", lambda runs_root: None)
    at = app("train")
    assert "tr_data_root" not in [t.key for t in at.text_input]           # mnist-svhn, offline
    at.selectbox(key="tr_dataset").set_value("cub").run()
    at.text_input(key="tr_name").set_value("cub-run")
    at.form_submit_button[0].click().run()
    assert problems(at) == [] and any("Data root" in e.value for e in at.error) and not started
    at.text_input(key="tr_data_root").set_value("/data/CUB").run()
    at.form_submit_button[0].click().run()
    assert problems(at) == [] and not at.error
    assert "--config" in started[-1] and "--data-root" not in started[-1]
    assert (configs[-1].data.dataset, configs[-1].data.root) == ("cub", "/data/CUB")
    at.selectbox(key="tr_dataset").set_value("cub-synthetic").run()
    assert "tr_data_root" not in [t.key for t in at.text_input] and "tr_source" not in [s.key for s in at.selectbox]
    at.text_input(key="tr_name").set_value("synth-run")
    at.form_submit_button[0].click().run()
    assert (configs[-1].data.dataset, configs[-1].data.root, configs[-1].data.source) == ("cub-synthetic", None, "offline")
    assert configs[-1].objective.looser                 # CUB + an MMVAE variant: the looser bound by default
    at.selectbox(key="tr_dataset").set_value("mnist-svhn").run()
    at.selectbox(key="tr_source").set_value("real").run()
    at.text_input(key="tr_data_root").set_value("/data/torchvision").run()
    at.text_input(key="tr_name").set_value("real-run")
    at.form_submit_button[0].click().run()
    cfg = configs[-1]
    assert (cfg.data.dataset, cfg.data.source, cfg.data.root) == ("mnist-svhn", "real", "/data/torchvision")
    assert cfg.objective.looser                         # MNIST-SVHN too: the looser bound by default


def test_training_switched_off_shows_no_form_and_no_cancel(root):
    runs = Path(root["CMVAE_RUNS"])
    sleeper = jobs.start("watched", [sys.executable, "-c", "import time; time.sleep(60)"], runs)
    try:
        with environ({jobs.TRAINING_ENV: "off"}):
            at = app("train")
            assert problems(at) == []
            assert not at.form_submit_button and not any(b.label == "Cancel run" for b in at.button)
            assert any("switched off" in i.value for i in at.info)
            assert any("watched: running" in h.value for h in at.subheader)     # the run is still shown
    finally:
        jobs.cancel(runs, wait=1)
