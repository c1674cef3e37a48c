"""Generations from a trained run, as in the paper's figures (Appendix G, Figures 12, 14-16).

``python -m engine generate RUN_DIR --mode {joint,mnist_to_svhn,svhn_to_mnist,reconstruct} --out FILE``
writes a ``.png`` grid (inputs above outputs) or an ``.npz`` of arrays. Arrays are decoder means in
[0, 1] shaped like the dataset's images (N, C, H, W), float32:

- joint:          outputs_<m> for every modality (same prior sample z per column); no inputs, no labels.
- <a>_to_<b>:     inputs (modality a), outputs (modality b from z ~ q(z | x_a)), labels of the inputs.
- reconstruct:    inputs_<m>, outputs_<m> (modality m from z ~ q(z | x_m)) for every modality, labels.

Inputs are the first n test pairs of a fixed random order chosen by ``seed``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import engine
from engine.errors import ConfigError
from engine.modes import modes
from engine.options import add_device_arg
from engine.registry import build_data


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


@torch.no_grad()
def generations(model, data, mode: str, n: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays for ``mode`` (see the module docstring); deterministic for a given seed."""
    names = tuple(mod.name for mod in model.mods)
    if mode not in modes(names):
        raise ConfigError(f"unknown mode {mode!r}; choose one of {', '.join(modes(names))}")
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    gen = torch.Generator(device=model.device).manual_seed(seed)
    if mode == "joint":
        return {f"outputs_{name}": _np(out) for name, out in zip(names, model.generate(n, gen))}
    order = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(seed))[:n]
    xs, labels = data.test.batch(order)
    xs = [x.to(model.device) for x in xs]
    if mode == "reconstruct":
        out = {"labels": _np(labels)}
        for m, name in enumerate(names):
            out[f"inputs_{name}"] = _np(xs[m])
            out[f"outputs_{name}"] = _np(model.cross_generate(xs[m], m, m, gen))
        return out
    a, b = mode.split("_to_")
    m, k = names.index(a), names.index(b)
    return {"inputs": _np(xs[m]), "outputs": _np(model.cross_generate(xs[m], m, k, gen)), "labels": _np(labels)}


def _as_rgb32(x: np.ndarray) -> torch.Tensor:
    """Images (N, C, H, W) -> (N, 3, 32, 32): grey repeated to RGB, smaller images padded centrally."""
    t = torch.from_numpy(x).float()
    if t.ndim != 4:
        raise ConfigError(f"only image modalities can be drawn as a grid; got arrays of shape {tuple(t.shape)}")
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    ph, pw = 32 - t.shape[2], 32 - t.shape[3]
    if ph > 0 or pw > 0:
        t = F.pad(t, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return t


def grid_rows(arrays: dict[str, np.ndarray], mode: str, names: tuple[str, ...]) -> list[np.ndarray]:
    """The image rows of a figure, top to bottom within each block: inputs above their outputs."""
    if mode == "joint":
        return [arrays[f"outputs_{n}"] for n in names]
    if mode == "reconstruct":
        return [arrays[f"{kind}_{n}"] for n in names for kind in ("inputs", "outputs")]
    return [arrays["inputs"], arrays["outputs"]]


def save_png(arrays: dict[str, np.ndarray], mode: str, names: tuple[str, ...], path: Path, ncol: int = 8) -> None:
    """A grid of blocks of ``ncol`` columns; each block stacks the rows of ``grid_rows``."""
    from torchvision.utils import make_grid      # torchvision: ~4 s to import, for PNG grids only

    rows = [_as_rgb32(r) for r in grid_rows(arrays, mode, names)]
    n = rows[0].shape[0]
    ncol = min(ncol, n)
    pad = (-n) % ncol
    rows = [torch.cat([r, torch.ones(pad, *r.shape[1:])]) if pad else r for r in rows]
    blocks = torch.stack([r.reshape(-1, ncol, *r.shape[1:]) for r in rows], 1)   # (n/ncol, rows, ncol, 3,32,32)
    grid = make_grid(blocks.reshape(-1, *blocks.shape[-3:]), nrow=ncol, padding=2, pad_value=1.0)
    img = (grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def write(arrays: dict[str, np.ndarray], mode: str, names: tuple[str, ...], out: str | Path) -> Path:
    """Write ``arrays`` as ``.png`` (grid) or ``.npz`` according to the suffix of ``out``."""
    out = Path(out)
    if out.suffix == ".png":
        save_png(arrays, mode, names, out)
    elif out.suffix == ".npz":
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out, **arrays)
    else:
        raise ConfigError(f"--out must end in .png or .npz, got {out.name!r}")
    return out


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="joint / cross generations and reconstructions -> .png or .npz",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--mode", required=True,
                   help="joint, mnist_to_svhn, svhn_to_mnist or reconstruct (other datasets: <a>_to_<b>)")
    p.add_argument("--n", type=int, default=64, help="number of items (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output file: .png grid or .npz arrays")
    add_device_arg(p)
    p.set_defaults(func=run_generate)


def run_generate(a: argparse.Namespace) -> int:
    if Path(a.out).suffix not in (".png", ".npz"):
        raise ConfigError(f"--out must end in .png or .npz, got {Path(a.out).name!r}")
    model = engine.load(a.run_dir, a.device)
    data = None if a.mode == "joint" else build_data(model.config.data)
    arrays = generations(model, data, a.mode, a.n, a.seed)
    names = tuple(mod.name for mod in model.mods)
    print(f"wrote {write(arrays, a.mode, names, a.out)}")
    return 0


__all__ = ["generations", "modes", "write", "save_png", "grid_rows"]
