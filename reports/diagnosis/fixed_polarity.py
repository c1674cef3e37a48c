"""Diagnostic only: does MNIST->SVHN leave chance when the SVHN stand-in's class medians show the digit?

The offline stand-in draws foreground and background colours independently, with a random
polarity, so the L1-optimal SVHN image for a digit (its per-pixel median) is the same blur for
every digit. This script renders a variant whose foreground is always the darker colour (same
fonts, geometry, noise; only the polarity fixed), trains the same recipe on it in a separate
cache, and evaluates with the shipped digit classifiers. It tests a mechanism; it is not a
proposal to ship fixed-polarity data.

    CMVAE_CACHE=/tmp/cmvae-polarity PYTHONPATH=. python reports/diagnosis/fixed_polarity.py OUT [train flags...]
"""
import json
import sys

import numpy as np

import engine.data.synth_svhn as S
from engine.cli import main

_colours = S._contrasting_colours


def darker_foreground(fg, bg, sat_fg, sat_bg, min_dl):
    """The stand-in's colours, with fg and bg swapped wherever the foreground came out lighter."""
    fg, bg = _colours(fg, bg, sat_fg, sat_bg, min_dl)
    lighter = (fg @ S.LUMA) > (bg @ S.LUMA)
    return np.where(lighter[:, None], bg, fg), np.where(lighter[:, None], fg, bg)


if __name__ == "__main__":
    S._contrasting_colours = darker_foreground
    out, flags = sys.argv[1], sys.argv[2:]
    code = main(["train", *flags, "--out", out])
    if code == 0:
        from engine.evaluate import evaluate

        m = evaluate(out, samples=1000, ll_samples=0, device="cpu", progress=False, test_pairs=1000, latent_max=2000)
        print(json.dumps({k: m[k] for k in ("latent_accuracy", "joint_coherence", "cross_coherence", "alignment")}))
    sys.exit(code)
