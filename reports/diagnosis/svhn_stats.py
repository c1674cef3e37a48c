"""Statistics that decide whether an SVHN source is like real SVHN and lets a decoder render the digit.

    PYTHONPATH=. python reports/diagnosis/svhn_stats.py [--source offline|real] [--data-root DIR]
    PYTHONPATH=. python reports/diagnosis/svhn_stats.py --figure sgan-s-m.png

Prints, for the train split: per-channel mean and std, correlation between colour channels
(pooled over pixels, and within each crop), per-crop saturation, mean luma, luma spread, the
5-95 % luma range of the crop's centre, the share of crops whose centre is dominated by a dark
tail (a dark digit on a lighter ground; an automatic rule, noisy on bold digits), and class-median
legibility: the per-pixel median image of each digit class (the L1-optimal output of a decoder
that knows only the digit), read by the shipped SVHN classifier, with the spread of those ten medians.

``--figure`` reads the 64 real SVHN train crops in the public figure ``gif/sgan-s-m.png`` of
yunjey/mnist-svhn-transfer (a grid of 8 x 16 tiles of 32 x 32, SVHN crops in the even columns)
and adds ``DARK_DIGIT_BY_EYE``, the polarity of each crop as read by eye (the automatic rule
disagrees on bold white digits that fill the centre).
"""
import argparse
import json

import numpy as np
import torch

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# The 64 crops of the figure, row by row: D = dark digit on a lighter ground, L = light digit on a
# darker ground, ? = too dark or blurred to tell. Crops 2k and 2k+1 are often the same photo.
DARK_DIGIT_BY_EYE = "DDLLDDLL" "DDDDDDDD" "DDDDDDDD" "DDLLDDDD" "DDLLDDDD" "D??LDDDD" "DLLDDDDD" "DDDDDDDL"


def _percentiles(v: np.ndarray) -> list[float]:
    return [round(float(p), 3) for p in np.percentile(v, [10, 50, 90])]


def _unit(images: np.ndarray) -> np.ndarray:
    """float32 in [0, 1] from uint8 or float images."""
    return images.astype(np.float32) / 255 if images.dtype == np.uint8 else images.astype(np.float32)


def colour_statistics(images: np.ndarray) -> dict:
    """``images`` (n, 32, 32, 3) uint8 or float in [0, 1], channels last."""
    x = _unit(images)
    n = len(x)
    luma = x @ LUMA
    pooled = np.corrcoef(x.reshape(-1, 3)[:200_000].T)[np.triu_indices(3, 1)].mean()
    within = [np.corrcoef(im.reshape(-1, 3).T)[np.triu_indices(3, 1)].mean()
              for im in x[:2000] if im.reshape(-1, 3).std(0).min() > 1e-3]
    hi, lo = x.max(-1), x.min(-1)
    centre = luma[:, 6:26, 8:24].reshape(n, -1)
    med = np.median(centre, 1)
    p5, p95 = np.percentile(centre, 5, 1), np.percentile(centre, 95, 1)
    return {"crops": n,
            "channel_mean": [round(float(v), 3) for v in x.mean((0, 1, 2))],
            "channel_std": [round(float(v), 3) for v in x.std((0, 1, 2))],
            "channel_correlation_pooled": round(float(pooled), 3),
            "channel_correlation_within_crop_median": round(float(np.median(within)), 3),
            "saturation_p10_p50_p90": _percentiles(((hi - lo) / np.maximum(hi, 1e-3)).mean((1, 2))),
            "mean_luma_p10_p50_p90": _percentiles(luma.mean((1, 2))),
            "luma_std_p10_p50_p90": _percentiles(luma.std((1, 2))),
            "centre_luma_range_p10_p50_p90": _percentiles(p95 - p5),
            "dark_digit_auto": round(float(((med - p5) > (p95 - med)).mean()), 3)}


def class_medians(images: np.ndarray, labels: np.ndarray, svhn_clf) -> dict:
    """Read the per-pixel median crop of each digit with ``svhn_clf``."""
    x = _unit(images)
    X = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    medians = torch.stack([X[torch.from_numpy(labels == d)].median(0).values for d in range(10)])
    with torch.no_grad():
        read = svhn_clf(medians).argmax(1).tolist()
    return {"class_median_read_as": read, "class_median_legibility": sum(r == d for d, r in enumerate(read)) / 10,
            "class_median_spread": round(float(medians.std(0).mean()), 4)}


def figure_crops(path: str) -> np.ndarray:
    """The 64 SVHN crops (64, 32, 32, 3) uint8 of the figure's even columns, row by row."""
    from PIL import Image

    g = np.asarray(Image.open(path).convert("RGB"))
    if g.shape != (256, 512, 3):
        raise SystemExit(f"{path}: expected the 512 x 256 figure, got {g.shape[1]} x {g.shape[0]}")
    return np.stack([g[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32] for r in range(8) for c in range(0, 16, 2)])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="offline", choices=("offline", "real"))
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--figure", default=None, help="the PNG of real SVHN crops described above")
    a = ap.parse_args()
    if a.figure:
        crops = figure_crops(a.figure)
        known = [c for c in DARK_DIGIT_BY_EYE if c != "?"]
        stats = colour_statistics(crops) | {"dark_digit_by_eye": round(known.count("D") / len(known), 3),
                                            "unreadable_by_eye": DARK_DIGIT_BY_EYE.count("?")}
    else:
        from engine.config import DataConfig
        from engine.data.svhn import load_svhn
        from engine.metrics.classifiers import get_classifiers

        images, labels = load_svhn("train", a.source, a.data_root, False)
        x = np.asarray(images)
        x = x.transpose(0, 2, 3, 1) if x.shape[1] == 3 else x
        _, svhn_clf, _ = get_classifiers(DataConfig(source=a.source, root=a.data_root))
        stats = colour_statistics(x) | class_medians(x, np.asarray(labels), svhn_clf)
    print(json.dumps(stats, indent=2))
