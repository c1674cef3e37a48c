"""Generation mode names, torch-free so a viewer can list them before importing any model code."""
from __future__ import annotations

CUB_MODES = ("joint", "image_to_caption", "caption_to_image", "reconstruct")


def modes(names: tuple[str, ...]) -> list[str]:
    """The generation modes of a dataset with modalities ``names``."""
    return ["joint", *[f"{a}_to_{b}" for a in names for b in names if a != b], "reconstruct"]
