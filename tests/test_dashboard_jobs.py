"""dashboard.jobs: one training run at a time under a real lock, every started process recorded,
stale locks never block, the switch that turns training from the page off, and the localhost bind."""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dashboard import jobs

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_five_simultaneous_starts_start_one_trainer(tmp_path):
    barrier, results = threading.Barrier(5), []

    def click(i):
        barrier.wait()
        try:
            results.append(jobs.start(f"run-{i}", SLEEP, tmp_path))
        except jobs.JobError as e:
            results.append(e)

    threads = [threading.Thread(target=click, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [r for r in results if isinstance(r, jobs.Job)]
    try:
        assert len(started) == 1, results
        refused = [r for r in results if not isinstance(r, jobs.Job)]
        assert len(refused) == 4 and all(isinstance(e, jobs.JobBusy) for e in refused)
        assert all("a training run is already going" in str(e) for e in refused)
        assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [started[0].name]
        assert jobs.active(tmp_path).pid == started[0].pid          # the one process is the recorded one
    finally:
        jobs.cancel(tmp_path, wait=1)
    assert not jobs.is_alive(started[0].pid)


def test_the_trainer_holds_the_lock_and_its_death_frees_it(tmp_path):
    job = jobs.start("first", SLEEP, tmp_path)
    (tmp_path / jobs.ACTIVE_NAME).unlink()              # even with the record lost, the lock refuses
    with pytest.raises(jobs.JobBusy, match="another run holds the lock"):
        jobs.start("second", SLEEP, tmp_path)
    assert (tmp_path / jobs.LOCK_NAME).read_text().strip() == str(job.pid)
    import os
    import signal

    os.killpg(job.pid, signal.SIGKILL)
    os.waitpid(job.pid, 0)
    again = jobs.start("second", [sys.executable, "-c", "pass"], tmp_path)     # no stale lock
    assert jobs.last_job(tmp_path).pid == again.pid
    jobs.cancel(tmp_path, wait=1)


def test_a_lock_held_by_another_process_refuses(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"),
        str(tmp_path / jobs.LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(jobs.JobBusy):
            jobs.start("blocked", SLEEP, tmp_path)
        assert not (tmp_path / "blocked").exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("value,allowed", [("", True), ("on", True), ("off", False), ("0", False),
                                           ("maybe", False)])
def test_training_switch(monkeypatch, tmp_path, value, allowed):
    monkeypatch.setenv(jobs.TRAINING_ENV, value)
    ok, why = jobs.training_allowed()
    assert ok is allowed and (allowed or jobs.TRAINING_ENV in why)
    if not allowed:
        with pytest.raises(jobs.TrainingDisabled):
            jobs.start("nope", SLEEP, tmp_path)
        assert not (tmp_path / "nope").exists()


def test_the_server_binds_to_localhost_by_default():
    import tomllib

    cfg = tomllib.loads((Path(__file__).resolve().parents[1] / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "localhost"
