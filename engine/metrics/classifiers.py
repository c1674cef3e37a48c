"""Digit classifiers for coherence (paper §4.2): a small MNIST CNN and a small SVHN CNN.

They are trained on the TRAIN split of the sources a run uses (never on test data) and cached:
the offline default ships under ``checkpoints/classifiers/`` (``mnist-offline.pt``,
``svhn-offline.pt`` and ``offline.json`` with test accuracy, command and seconds); any other
source is trained on first use into ``cache_dir()/classifiers/``. Weights are plain state dicts,
loaded with ``torch.load(weights_only=True)``.

Retrain the shipped pair: ``python -m engine.metrics.classifiers --source offline --out checkpoints/classifiers``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from engine.checkpoints import atomic_save, atomic_write_text
from engine.config import DataConfig
from engine.data.cache import cache_dir
from engine.data.mnist import load_mnist
from engine.data.svhn import load_svhn
from engine.data.synth_svhn import GENERATOR_VERSION
from engine.device import pick_device
from engine.errors import CheckpointError, ConfigError
from engine.options import add_device_arg

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "checkpoints" / "classifiers"
NAMES = ("mnist", "svhn")
# Training schedule per modality: epochs over the train split, batch size, learning rate.
SCHEDULE = {"mnist": {"epochs": 12, "batch_size": 128, "lr": 3e-3},
            "svhn": {"epochs": 4, "batch_size": 128, "lr": 3e-3}}


class DigitCNN(nn.Module):
    """Three conv blocks (conv-BN-ReLU, max-pool; 16-32-64 channels) and a linear head; ~25k parameters."""

    def __init__(self, in_channels: int, width: int = 16):
        super().__init__()
        w = width

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

        self.net = nn.Sequential(*block(in_channels, w), *block(w, 2 * w), *block(2 * w, 4 * w),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * w, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Predicted digit (N,) for images (N, C, H, W) in [0,1], batched."""
        if x.shape[0] == 0:
            return torch.empty(0, dtype=torch.long, device=x.device)
        return torch.cat([self(b).argmax(-1) for b in x.split(batch_size)])


def build_classifier(name: str) -> DigitCNN:
    if name not in NAMES:
        raise ConfigError(f"no digit classifier for modality {name!r}; choose from {', '.join(NAMES)}")
    return DigitCNN(1 if name == "mnist" else 3)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random small affine warps (rotation ±10°, scale 0.9-1.1, shift ±10%), one batched grid_sample."""
    B = x.shape[0]
    u = torch.rand(B, 4, generator=generator, device=x.device) * 2 - 1
    ang, s = u[:, 0] * math.radians(10), 1 + 0.1 * u[:, 1]
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, 0.1 * u[:, 2]], -1),
                         torch.stack([sin, cos, 0.1 * u[:, 3]], -1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


@torch.no_grad()
def accuracy(clf: DigitCNN, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    clf.eval()
    pred = torch.cat([clf.predict(b.to(device)).cpu() for b in x.split(1024)])
    return float((pred == y).float().mean())


def train_classifier(name: str, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                     device: torch.device, seed: int = 0, epochs: int | None = None,
                     progress: bool = True) -> tuple[DigitCNN, dict]:
    """Train on ``train`` (images, labels) with augmentation; report accuracy on ``test``."""
    sched = dict(SCHEDULE[name])
    if epochs is not None:
        sched["epochs"] = epochs
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator(device=device).manual_seed(seed)
    clf = build_classifier(name).to(device)
    x, y = train
    bs = min(sched["batch_size"], len(y))
    steps_per_epoch = len(y) // bs
    total = steps_per_epoch * sched["epochs"]
    opt = torch.optim.Adam(clf.parameters(), lr=sched["lr"])
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, sched["lr"], total_steps=total)
    t0 = time.time()
    clf.train()
    with tqdm(total=total, disable=not progress, desc=f"{name} classifier", unit="step") as bar:
        for _ in range(sched["epochs"]):
            perm = torch.randperm(len(y), generator=gen)
            for b in range(steps_per_epoch):
                idx = perm[b * bs:(b + 1) * bs]
                xb, yb = augment(x[idx].to(device), aug_gen), y[idx].to(device)
                loss = F.cross_entropy(clf(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                lr_sched.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.time() - t0
    acc = accuracy(clf, *test, device)
    info = {"test_accuracy": acc, "seconds": round(seconds, 1), "train_size": int(len(y)),
            "test_size": int(len(test[1])), "epochs": sched["epochs"], "seed": seed,
            "parameters": sum(p.numel() for p in clf.parameters())}
    return clf.eval(), info


def _load(name: str, path: Path, device: torch.device) -> DigitCNN:
    clf = build_classifier(name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        clf.load_state_dict(state)
    except Exception as e:   # truncated file, foreign weights: retraining is the remedy
        raise CheckpointError(f"{path} is not a readable {name} classifier ({e}); delete it to retrain") from e
    return clf.to(device).eval()


def _folder_for(source: str) -> Path:
    """Shipped folder for the offline default (when its files fit this engine), else the cache."""
    if source == "offline" and (SHIPPED_DIR / "offline.json").is_file():
        meta = json.loads((SHIPPED_DIR / "offline.json").read_text())
        if meta.get("svhn_generator_version") == GENERATOR_VERSION:
            return SHIPPED_DIR

    return cache_dir() / "classifiers"


def train_and_save(source: str, out: Path, device: torch.device, root: str | None = None,
                   download: bool = False, progress: bool = True, command: str | None = None) -> dict:
    """Train both classifiers on ``source``'s train splits and write ``<name>-<source>.pt`` + ``<source>.json``."""
    loaders = {"mnist": load_mnist, "svhn": load_svhn}
    meta = {"source": source, "svhn_generator_version": GENERATOR_VERSION,
            "command": command or f"python -m engine.metrics.classifiers --source {source} --out {out}"}
    for name in NAMES:
        train = loaders[name]("train", source, root, download)
        test = loaders[name]("test", source, root, download)
        clf, info = train_classifier(name, train, test, device, progress=progress)
        atomic_save({k: v.cpu() for k, v in clf.state_dict().items()}, out / f"{name}-{source}.pt")
        meta[name] = info
    atomic_write_text(out / f"{source}.json", json.dumps(meta, indent=2))
    return meta


def get_classifiers(data_cfg: DataConfig, device: torch.device | str = "cpu", progress: bool = True
                    ) -> tuple[DigitCNN, DigitCNN, dict]:
    """(mnist_clf, svhn_clf, info) for the sources ``data_cfg`` names: loaded, or trained once and cached.

    ``info`` holds per-modality test accuracy, training seconds and the folder the weights came from.
    """
    if data_cfg.dataset != "mnist-svhn":
        raise ConfigError(f"digit classifiers exist for mnist-svhn only, not {data_cfg.dataset!r}")
    device = pick_device(device) if isinstance(device, str) else device
    folder = _folder_for(data_cfg.source)
    source = data_cfg.source
    paths = [folder / f"{n}-{source}.pt" for n in NAMES]
    meta_path = folder / f"{source}.json"
    if not (meta_path.is_file() and all(p.is_file() for p in paths)):
        folder.mkdir(parents=True, exist_ok=True)
        train_and_save(source, folder, device, data_cfg.root, data_cfg.download, progress)
    meta = json.loads(meta_path.read_text())
    mnist, svhn = (_load(n, p, device) for n, p in zip(NAMES, paths))
    info = {n: {"test_accuracy": meta[n]["test_accuracy"], "seconds": meta[n]["seconds"], "path": str(p)}
            for n, p in zip(NAMES, paths)}
    return mnist, svhn, info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.metrics.classifiers",
                                description="Train the MNIST and SVHN digit classifiers used for coherence.")
    p.add_argument("--source", default="offline", choices=("offline", "real"))
    p.add_argument("--data-root", default=None)
    p.add_argument("--download", action="store_true")
    p.add_argument("--out", required=True, help="folder for <name>-<source>.pt and <source>.json")
    add_device_arg(p)
    a = p.parse_args(argv)

    cmd = f"python -m engine.metrics.classifiers --source {a.source} --out {a.out}"
    meta = train_and_save(a.source, Path(a.out), pick_device(a.device), a.data_root, a.download, command=cmd)
    print(json.dumps(meta, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
