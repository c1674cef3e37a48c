"""Statistics that decide whether an SVHN source lets a decoder render the digit from the digit alone.

    PYTHONPATH=. python reports/diagnosis/svhn_stats.py [--source offline|real] [--data-root DIR]

Prints, for the train split: per-channel mean and std, mean correlation between colour channels,
the share of crops whose centre is darker than their border (dark-on-light polarity), and
class-median legibility: the per-pixel median image of each digit class (the L1-optimal output
of a decoder that knows only the digit), read by the shipped SVHN classifier, with the spread of
those ten medians. Run it with ``--source real`` where real SVHN is on disk to calibrate the stand-in.
"""
import argparse
import json

import numpy as np
import torch

from engine.config import DataConfig
from engine.data.svhn import load_svhn
from engine.metrics.classifiers import get_classifiers

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def svhn_statistics(images: np.ndarray, labels: np.ndarray, svhn_clf) -> dict:
    """``images`` (n, 32, 32, 3) uint8 or (n, 3, 32, 32) float in [0, 1]; ``labels`` (n,)."""
    x = images.astype(np.float32) / 255 if images.dtype == np.uint8 else images.transpose(0, 2, 3, 1)
    flat = x.reshape(len(x), -1, 3)
    corr = np.corrcoef(flat[:2000].reshape(-1, 3).T)
    luma = x @ LUMA
    centre = luma[:, 10:22, 12:20].mean((1, 2))
    border = np.concatenate([luma[:, :3].reshape(len(x), -1), luma[:, -3:].reshape(len(x), -1)], 1).mean(1)
    X = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    medians = torch.stack([X[torch.from_numpy(labels == d)].median(0).values for d in range(10)])
    with torch.no_grad():
        read = svhn_clf(medians).argmax(1).tolist()
    return {"channel_mean": [round(float(v), 3) for v in x.mean((0, 1, 2))],
            "channel_std": [round(float(v), 3) for v in x.std((0, 1, 2))],
            "channel_correlation": round(float(corr[np.triu_indices(3, 1)].mean()), 3),
            "dark_on_light": round(float((centre < border).mean()), 3),
            "class_median_read_as": read, "class_median_legibility": sum(r == d for d, r in enumerate(read)) / 10,
            "class_median_spread": round(float(medians.std(0).mean()), 4)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="offline", choices=("offline", "real"))
    ap.add_argument("--data-root", default=None)
    a = ap.parse_args()
    images, labels = load_svhn("train", a.source, a.data_root, False)
    _, svhn_clf, _ = get_classifiers(DataConfig(source=a.source, root=a.data_root))
    print(json.dumps(svhn_statistics(np.asarray(images), np.asarray(labels), svhn_clf), indent=2))
