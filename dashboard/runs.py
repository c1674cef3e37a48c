"""Finding trained runs: folders holding checkpoint.pt + config.json under the checkpoint roots.

Roots come from the environment so tests and demos can point the app elsewhere:
``CMVAE_CHECKPOINTS`` (shipped models, default ./checkpoints), ``CMVAE_RUNS`` (runs trained from
the dashboard or the CLI, default ./runs) and ``CMVAE_REPORTS`` (default ./reports).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"               # engine.checkpoints.BEST_NAME: what engine.load reads from a run folder
CONFIG = "config.json"


def _env_path(var: str, default: str) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser() if value else ROOT / default


def checkpoints_root() -> Path:
    return _env_path("CMVAE_CHECKPOINTS", "checkpoints")


def runs_root() -> Path:
    return _env_path("CMVAE_RUNS", "runs")


def reports_root() -> Path:
    return _env_path("CMVAE_REPORTS", "reports")


@dataclass(frozen=True)
class RunInfo:
    """One run folder as the pickers show it; ``problem`` says why it cannot be loaded (or '')."""

    name: str
    path: Path
    origin: str                  # "checkpoints" or "runs"
    variant: str = "?"
    dataset: str = "?"
    config: dict = field(default_factory=dict, compare=False, hash=False)
    problem: str = ""

    @property
    def label(self) -> str:
        tag = f" — {self.problem}" if self.problem else ""
        return f"{self.name} ({self.variant}, {self.dataset}, {self.origin}){tag}"

    @property
    def key(self) -> str:
        return str(self.path)

    @property
    def checkpoint(self) -> Path:
        """The file engine.load reads from this folder: best.pt where there is one, else checkpoint.pt."""
        return self.path / BEST if (self.path / BEST).is_file() else self.path / CHECKPOINT

    @property
    def mtime(self) -> float:
        """Modification time of that checkpoint (0 if missing): the cache key of everything derived."""
        try:
            return self.checkpoint.stat().st_mtime
        except OSError:
            return 0.0


def describe(path: Path, origin: str) -> RunInfo:
    """Read a run folder's config.json (cheap: no torch) and note what is missing or broken."""
    path = Path(path)
    cfg_path = path / CONFIG
    problem = ""
    config: dict = {}
    try:
        config = json.loads(cfg_path.read_text())
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        problem = "no config.json"
    except (OSError, ValueError) as e:
        problem = f"config.json unreadable ({e.__class__.__name__})"
        config = {}
    if not (path / CHECKPOINT).is_file():
        problem = problem or "no checkpoint.pt yet"
    data = config.get("data", {}) if isinstance(config.get("data"), dict) else {}
    return RunInfo(name=path.name, path=path, origin=origin, variant=str(config.get("variant", "?")),
                   dataset=str(data.get("dataset", "?")), config=config, problem=problem)


def find_runs(dataset: str | None = None, include_broken: bool = True) -> list[RunInfo]:
    """Every run folder (one with checkpoint.pt or config.json) under both roots, sorted by name.

    Hidden folders (``.something``) are skipped. ``dataset`` filters by the config's dataset.
    """
    found = []
    for origin, root in (("checkpoints", checkpoints_root()), ("runs", runs_root())):
        if not root.is_dir():
            continue
        for p in sorted(root.iterdir()):
            if p.name.startswith(".") or not p.is_dir():
                continue
            if not ((p / CHECKPOINT).exists() or (p / CONFIG).exists()):
                continue
            info = describe(p, origin)
            if dataset and info.dataset != dataset:
                continue
            if info.problem and not include_broken:
                continue
            found.append(info)
    return found


def datasets(runs: list[RunInfo]) -> list[str]:
    """Datasets present among ``runs``, mnist-svhn first."""
    names = sorted({r.dataset for r in runs}, key=lambda d: (d != "mnist-svhn", d))
    return names


def read_json(path: Path) -> dict | None:
    """A JSON file's content, or None if it is missing; ValueError if it is malformed."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e


def propagation_reports() -> list[Path]:
    """Label-propagation / relatedness reports: reports/relatedness/*.json."""
    folder = reports_root() / "relatedness"
    return sorted(folder.glob("*.json")) if folder.is_dir() else []
