"""Paired multimodal datasets: index tuples into M unimodal tensors, gathered per batch.

Pairs are stored as indices, never as copied images, so hundreds of thousands of pairs cost
a few megabytes; ``batches`` gathers whole batches with one index op per modality.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from engine.errors import ConfigError, DataError

SPLITS = ("train", "test")


class PairedDataset(torch.utils.data.Dataset):
    """Pairs (index tuples) into M unimodal tensors; item = (tuple of M tensors, label)."""

    def __init__(self, modalities: tuple[torch.Tensor, ...], index: torch.Tensor,
                 labels: torch.Tensor, names: tuple[str, ...]):
        """``index`` is (P, M) int64 into the modalities; ``labels`` (P,) int64, -1 if none."""
        modalities, names = tuple(modalities), tuple(names)
        index = torch.as_tensor(index, dtype=torch.int64)
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if index.ndim != 2 or index.shape[1] != len(modalities) or len(names) != len(modalities):
            raise DataError(f"index must be (P, {len(modalities)}) with one name per modality; "
                            f"got index {tuple(index.shape)} and names {names}")
        if labels.shape != (index.shape[0],):
            raise DataError(f"labels must be ({index.shape[0]},), got {tuple(labels.shape)}")
        for m, x in enumerate(modalities):
            if index.shape[0] and (int(index[:, m].min()) < 0 or int(index[:, m].max()) >= x.shape[0]):
                raise DataError(f"pair index out of range for modality {names[m]!r} ({x.shape[0]} items)")
        self.modalities, self.index, self.labels, self.names = modalities, index, labels, names

    def __len__(self) -> int:
        return self.index.shape[0]

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, ...], int]:
        row = self.index[i]
        return tuple(x[row[m]] for m, x in enumerate(self.modalities)), int(self.labels[i])

    def batch(self, idx: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Gather pairs ``idx`` at once: one (B, ...) tensor per modality, and (B,) labels."""
        rows = self.index[idx]
        return [x[rows[:, m]] for m, x in enumerate(self.modalities)], self.labels[idx]

    def batches(self, batch_size: int, shuffle: bool, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        """Iterate ``batch(...)`` over one epoch; the fast path with no per-item collate."""
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield self.batch(order[start:start + batch_size])


def check_splits(splits) -> tuple[str, ...]:
    """The requested splits in canonical order; ConfigError unless they are a non-empty subset of SPLITS."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ConfigError(f"splits must be some of {', '.join(SPLITS)}; got {', '.join(map(str, splits)) or 'none'}")
    return tuple(s for s in SPLITS if s in splits)


def no_pairs(like: PairedDataset) -> PairedDataset:
    """An empty pair set shaped like ``like``: the split a partial build leaves out."""
    return PairedDataset(tuple(x[:0] for x in like.modalities), like.index[:0], like.labels[:0], like.names)


@dataclass
class MultimodalData:
    """Everything a model trains and is evaluated on, plus where it came from."""

    names: tuple[str, ...]
    train: PairedDataset
    test: PairedDataset
    unimodal: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]   # split -> name -> (data, labels)
    sources: dict[str, str]                                                # name -> description of the source
