"""Where a result came from, for report headers: the git commit and the machine."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

from engine.device import pick_device

ROOT = Path(__file__).resolve().parents[1]


def git_commit(ignore: Path | None = None) -> str:
    """HEAD, marked when tracked files differ from it; changes under ``ignore`` (the report's own folder,
    rewritten by every run) do not count."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        inside = ignore is not None and Path(ignore).resolve().is_relative_to(ROOT)
        spec = [f":(exclude){Path(ignore).resolve().relative_to(ROOT)}"] if inside else []
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *spec],
                               cwd=ROOT, capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "") or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine(device: str = "auto") -> str:
    """Platform, CPU, threads, the device ``device`` picks and the torch version."""
    dev = pick_device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    return (f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"{torch.get_num_threads()} torch threads, device {name}, torch {torch.__version__}")
