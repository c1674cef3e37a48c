"""Background training jobs: one detached ``python -m engine train`` at a time.

One at a time is enforced by an exclusive ``fcntl.flock`` on ``<runs root>/.train.lock``: ``start``
takes it without waiting (a second caller, thread or process, gets JobBusy) and hands the locked
descriptor to the trainer, which holds it until it exits; the kernel drops it when the process
dies, so a crash or ``kill -9`` never leaves a stale lock. The job is recorded in
``<runs root>/.active.json`` (pid, argv, run dir, log) before the lock is let go, so every started
process is recorded: any dashboard session (or a restarted server) sees it, follows its
progress.json and can cancel it. A recorded pid counts as running only while that process is
alive and still runs the recorded command (server restart, pid reuse). A run's settings reach the
trainer as a config file: ``train_config`` (the schema's resolve) -> ``start`` writes <run>/config.json
-> ``train_argv`` is ``python -m engine train --config <run>/config.json --out <run>``.

Training from the page can be switched off with ``CMVAE_DASHBOARD_TRAINING=off`` (``training_allowed``).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dashboard.runs import CONFIG
from engine.config import RunConfig, resolve
from engine.registry import model_class, parse_variant

ACTIVE_NAME = ".active.json"
LOCK_NAME = ".train.lock"
TRAINING_ENV = "CMVAE_DASHBOARD_TRAINING"
LOG_NAME = "train.log"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
REPO = Path(__file__).resolve().parents[1]


class JobError(Exception):
    """A job cannot start (bad name, existing folder, another job running) or be read."""


class JobBusy(JobError):
    """Another training run holds the lock: only one run at a time."""


class TrainingDisabled(JobError):
    """Training from the dashboard is switched off (CMVAE_DASHBOARD_TRAINING)."""


def training_allowed() -> tuple[bool, str]:
    """(allowed, why) from CMVAE_DASHBOARD_TRAINING: unset/on/1/true/yes allow it, off/0/false/no
    switch it off (a public demo); any other value switches it off too and says so."""
    raw = os.environ.get(TRAINING_ENV, "").strip().lower()
    if raw in ("", "on", "1", "true", "yes"):
        return True, ""
    if raw in ("off", "0", "false", "no"):
        return False, f"Training from the dashboard is switched off on this server ({TRAINING_ENV}={raw})."
    return False, (f"Training from the dashboard is switched off: {TRAINING_ENV}={raw!r} is not understood "
                   "(use on or off).")


@dataclass
class Job:
    pid: int
    name: str
    out: Path
    argv: list[str]
    started: float

    @property
    def log(self) -> Path:
        return self.out / LOG_NAME

    def to_dict(self) -> dict:
        return {"pid": self.pid, "name": self.name, "out": str(self.out), "argv": self.argv,
                "started": self.started}

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        return cls(int(d["pid"]), str(d["name"]), Path(d["out"]), [str(a) for a in d["argv"]],
                   float(d.get("started", 0.0)))


def default_looser(dataset: str) -> bool:
    """The engine's default for the looser bound of an MMVAE variant on ``dataset`` (the Train form's start)."""
    return resolve(overrides={"variant": "MMVAE"}, dataset=dataset).objective.looser


def train_config(model: str, dataset: str, data_fraction: float, epochs: int, max_steps: int | None, K: int,
                 N: int, gamma: float, batch_size: int, device: str = "auto", source: str = "offline",
                 data_root: str | None = None, looser: bool | None = None,
                 tight_after: int | None = None, tight_gamma: float | None = None,
                 tight_K: int | None = None) -> RunConfig:
    """The run the Train form asks for, through the config schema (engine.config.resolve): the
    chosen settings over the defaults and the dataset's defaults (ConfigError where they do not fit).

    ``data_root`` is kept only where it is read: dataset ``cub`` or source ``real``. ``looser`` is
    set only for variants whose model supports the looser bound (MMVAE's); None, and the others, keep
    the engine's default. So is ``tight_after`` (the step from which the tight bound is trained; None
    or 0: never), which the schema refuses without the looser bound, and ``tight_gamma`` / ``tight_K``
    (gamma / K from that step on; None or 0: the same throughout), kept only with ``tight_after``.
    """
    chosen = {"variant": model, "data.source": source, "data.data_fraction": float(data_fraction),
              "data.root": str(data_root) if needs_data_root(dataset, source) and data_root else None,
              "train.epochs": int(epochs), "train.max_steps": int(max_steps) if max_steps else None,
              "objective.K": int(K), "objective.N": int(N), "objective.gamma": float(gamma),
              "train.batch_size": int(batch_size), "train.device": device}
    if model_class(parse_variant(model)[0]).supports_looser:
        if looser is not None:
            chosen["objective.looser"] = bool(looser)
        if tight_after:
            chosen["objective.tight_after"] = int(tight_after)
            if tight_gamma:
                chosen["objective.tight_gamma"] = float(tight_gamma)
            if tight_K:
                chosen["objective.tight_K"] = int(tight_K)
    return resolve(overrides=chosen, dataset=dataset)


def train_argv(name: str, runs_root: Path) -> list[str]:
    """The CLI call a dashboard training run makes (the same a user would type): train the config
    that ``start`` writes into the run folder."""
    out = Path(runs_root) / name
    return [sys.executable, "-m", "engine", "train", "--config", str(out / CONFIG), "--out", str(out), "--no-progress"]


def needs_data_root(dataset: str, source: str) -> bool:
    """Whether a run reads files under a data root: real CUB, or real (torchvision) MNIST-SVHN."""
    return dataset == "cub" or source == "real"


def _state_file(runs_root: Path) -> Path:
    return Path(runs_root) / ACTIVE_NAME


def _reap(pid: int) -> None:
    """Collect the exit status if the job is our own child (so it does not linger as a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


def is_alive(pid: int, argv: list[str] | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, where /proc tells, still runs ``argv``."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            if stat[stat.rindex(")") + 2] in "ZX":
                return False
            if argv is not None:
                # Empty right after exec, before the kernel has set up the new image's arguments
                # (Popen has already returned then): a process that is there counts as running.
                cmdline = [c.decode(errors="replace") for c in (proc / "cmdline").read_bytes().split(b"\0") if c]
                return not cmdline or cmdline == list(argv)
        except (OSError, ValueError, IndexError):
            return False
    return True


def active(runs_root: Path) -> Job | None:
    """The recorded job if its process still runs; a stale record is left for ``last_job``."""
    job = last_job(runs_root)
    return job if job is not None and is_alive(job.pid, job.argv) else None


def last_job(runs_root: Path) -> Job | None:
    """The most recently started job (running or not), or None."""
    f = _state_file(runs_root)
    try:
        return Job.from_dict(json.loads(f.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_name(name: str, runs_root: Path) -> Path:
    """The run folder for ``name``; JobError if the name is unsafe or the folder already exists."""
    if not NAME_RE.match(name or ""):
        raise JobError(f"run name {name!r} is not allowed: use letters, digits, '.', '_' or '-' "
                       "(start with a letter or digit, at most 80 characters)")
    out = Path(runs_root) / name
    if out.exists():
        raise JobError(f"{out} already exists: choose another run name (or delete that folder)")
    return out


def busy_message(runs_root: Path) -> str:
    """What to tell a second starter: which run is going (from the record, where it is readable)."""
    running = active(runs_root)
    who = f"'{running.name}' (pid {running.pid}) is still running" if running else "another run holds the lock"
    return (f"a training run is already going: {who}. Only one run at a time: wait for it to finish or "
            "cancel it, then start again")


def start(name: str, argv: list[str], runs_root: Path, env: dict | None = None,
          config: RunConfig | None = None) -> Job:
    """Start ``argv`` detached (own session, output to <run>/train.log), holding the runs root's
    lock for as long as it runs, and record it; ``config`` is written (atomically) to <run>/config.json
    first, for ``train_argv``'s ``--config``.

    Refuses with JobBusy while another run holds the lock (or a recorded job is alive), with
    TrainingDisabled where training is switched off, and with JobError if the run folder exists.
    """
    allowed, why = training_allowed()
    if not allowed:
        raise TrainingDisabled(why)
    runs_root = Path(runs_root)
    runs_root.mkdir(parents=True, exist_ok=True)
    fd = os.open(runs_root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobBusy(busy_message(runs_root)) from None
        if active(runs_root) is not None:          # a run started before the lock existed (older dashboard)
            raise JobBusy(busy_message(runs_root))
        out = check_name(name, runs_root)
        out.mkdir(parents=True)
        if config is not None:
            config.save(out / CONFIG)
        with open(out / LOG_NAME, "wb") as log:
            proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env={**os.environ, **(env or {})}, pass_fds=(fd,))
        job = Job(proc.pid, name, out, list(argv), time.time())
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{proc.pid}\n".encode(), 0)
            tmp = _state_file(runs_root).with_suffix(".tmp")
            tmp.write_text(json.dumps(job.to_dict()))
            os.replace(tmp, _state_file(runs_root))
        except OSError:
            os.killpg(proc.pid, signal.SIGKILL)     # never leave a process running that nobody recorded
            raise
        return job
    finally:
        os.close(fd)                                # the trainer keeps its inherited copy of the lock


def cancel(runs_root: Path, wait: float = 30.0) -> Job | None:
    """Terminate the active job's process group (SIGTERM, then SIGKILL after ``wait`` s).

    On SIGTERM training finishes its step, saves checkpoint.pt and exits; ``wait`` leaves it time to."""
    job = active(runs_root)
    if job is None:
        return None
    for sig, grace in ((signal.SIGTERM, wait), (signal.SIGKILL, 1.0)):
        try:
            os.killpg(job.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        deadline = time.time() + grace
        while time.time() < deadline and is_alive(job.pid):
            time.sleep(0.05)
        if not is_alive(job.pid):
            break
    return job


def progress(job: Job) -> dict:
    """The job's progress.json (step, total_steps, epoch, loss..., done), or {} before the first write."""
    try:
        d = json.loads((job.out / "progress.json").read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def log_tail(job: Job, lines: int = 15) -> str:
    try:
        return "\n".join(job.log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def status(job: Job) -> str:
    """'running', 'done' (progress says done), or 'stopped' (gone without finishing: failed or cancelled)."""
    if is_alive(job.pid, job.argv):
        return "running"
    return "done" if progress(job).get("done") else "stopped"
