"""Fixed ImageNet image features for CUB: EfficientNet-Lite0 (1280-d, offline) or ResNet-101 (2048-d).

Shi et al. 2019 model CUB images through pre-computed ResNet-101 features; EfficientNet-Lite0
is the offline default because its weights ship as a pip package. Features are computed once
per data root and cached as ``features_<model>.npy`` with the image order in a JSON beside it.
A cache can be seeded from shipped features (``write_shipped`` / ``read_shipped``): used only
if the extractor and the bytes of every image they were computed from are unchanged.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from engine.errors import ConfigError, DataError
from engine.models.efficientnet_lite import load_efficientnet_lite0, preprocess, weights_path
from engine.progress import ProgressArg, reporter

FEATURE_DIMS = {"efficientnet-lite0": 1280, "resnet101": 2048}
FEATURE_NAMES = {"efficientnet-lite0": "EfficientNet-Lite0", "resnet101": "ResNet-101"}
RESIZE, CROP = 256, 224                      # standard ImageNet evaluation geometry
SAVE_EVERY = 256                             # images featurised between saves of the cache
PIPELINE_VERSION = 1                         # bump when load_pixels, a normaliser or a network changes
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """Use ``n`` intra-op threads for the block, then restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_pixels(image: Image.Image | str | Path) -> torch.Tensor:
    """RGB image → (3, 224, 224) uint8: shorter side resized to 256, then centre-cropped to 224."""
    if not isinstance(image, Image.Image):
        try:
            with Image.open(image) as f:
                image = f.convert("RGB")
        except OSError as e:
            raise DataError(f"cannot read image {image}: {e}") from e
    image = image.convert("RGB")
    w, h = image.size
    s = RESIZE / min(w, h)
    image = image.resize((max(CROP, round(w * s)), max(CROP, round(h * s))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - CROP) // 2, (h - CROP) // 2
    image = image.crop((left, top, left + CROP, top + CROP))
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def _resnet101(download: bool) -> torch.nn.Module:
    """torchvision ResNet-101 (ImageNet, V1 weights) from the torch hub cache; downloads only if allowed."""
    from torchvision.models import ResNet101_Weights, resnet101    # torchvision: ~4 s to import, ResNet only

    weights = ResNet101_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file() and not download:
        raise DataError(
            f"ResNet-101 ImageNet weights are not on disk (expected {cached}) and downloads are off. "
            f"Allow the download (needs internet), copy {Path(weights.url).name} there, or use the "
            f"offline features: --features efficientnet-lite0"
        )
    try:
        model = resnet101(weights=weights)
    except Exception as e:                   # network errors come in many types
        raise DataError(f"could not download ResNet-101 weights from {weights.url}: {e}; "
                        f"use the offline features: --features efficientnet-lite0") from e
    model.fc = torch.nn.Identity()
    return model.eval()


@lru_cache(maxsize=2)
def feature_model(model_name: str, download: bool = False) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """(network mapping normalised images to pooled features, pixel normaliser) for a model name,
    loaded once per process (a feature cache is filled in blocks)."""
    if model_name == "efficientnet-lite0":
        net = load_efficientnet_lite0()
        return _Features(net), preprocess
    if model_name == "resnet101":
        return _resnet101(download), lambda x: (x.float() / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    raise ConfigError(f"features must be one of {', '.join(FEATURE_DIMS)}; got {model_name!r}")


class _Features(torch.nn.Module):
    """Expose a network's ``features`` method as its forward."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


def extract_features(images: Sequence[Image.Image | str | Path], model_name: str, batch_size: int = 32,
                     download: bool = False, progress: ProgressArg = True) -> np.ndarray:
    """Pooled ImageNet features (N, F) float32 of PIL images or image paths.

    ``progress`` (see ``engine.progress``) hears of every batch, and of 0 done before the network loads.
    """
    what = f"{FEATURE_NAMES.get(model_name, model_name)} features of the images"
    report = reporter(progress)
    report(0, len(images), what)
    net, normalise = feature_model(model_name, download)
    out = np.empty((len(images), FEATURE_DIMS[model_name]), dtype=np.float32)
    with _threads(os.cpu_count() or 1), torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            x = normalise(torch.stack([load_pixels(im) for im in chunk]))
            out[start:start + len(chunk)] = net(x).numpy()
            report(start + len(chunk), len(images), what)
    return out


def _read_cache(array_path: Path, keys_path: Path, model_name: str) -> tuple[list[str], np.ndarray]:
    """(keys, features) stored in a feature cache, or ([], empty) if there is none or it has the wrong shape."""
    if not (array_path.is_file() and keys_path.is_file()):
        return [], np.empty((0, FEATURE_DIMS[model_name]), np.float32)
    try:
        stored_keys = json.loads(keys_path.read_text())
        stored = np.load(array_path)
    except (OSError, ValueError) as e:
        raise DataError(f"feature cache {array_path} is unreadable ({e}); delete it to recompute") from e
    if stored.shape != (len(stored_keys), FEATURE_DIMS[model_name]):
        return [], np.empty((0, FEATURE_DIMS[model_name]), np.float32)
    return stored_keys, stored


def extractor_id(model_name: str) -> dict:
    """What fixes a feature extractor's output: model name, pipeline version and its weights' SHA-256."""
    if model_name == "efficientnet-lite0":
        weights = weights_path()
    elif model_name == "resnet101":
        from torchvision.models import ResNet101_Weights    # torchvision: ~4 s to import, ResNet only

        weights = Path(torch.hub.get_dir()) / "checkpoints" / Path(ResNet101_Weights.IMAGENET1K_V1.url).name
    else:
        raise ConfigError(f"features must be one of {', '.join(FEATURE_DIMS)}; got {model_name!r}")
    return {"model": model_name, "pipeline_version": PIPELINE_VERSION,
            "weights_sha256": _sha256([weights]) if weights.is_file() else None}


def _sha256(paths: Sequence[Path], keys: Sequence[str] | None = None) -> str:
    """SHA-256 over files' bytes in order (each preceded by its key, if given)."""
    h = hashlib.sha256()
    for i, path in enumerate(paths):
        if keys is not None:
            h.update(keys[i].encode() + b"\0")
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def _suffixed(stem: Path, suffix: str) -> Path:
    return stem.with_name(stem.name + suffix)


def write_shipped(stem: Path, keys: Sequence[str], paths: Sequence[Path], features: np.ndarray,
                  model_name: str, about: str) -> None:
    """Write ``<stem>.npy`` (float32 features) and ``<stem>.json`` (keys, extractor, image checksum)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    meta = {"about": about, **extractor_id(model_name), "keys": list(keys),
            "images_sha256": _sha256(paths, list(keys)), "shape": list(features.shape), "dtype": "float32"}
    np.save(_suffixed(stem, ".npy"), np.ascontiguousarray(features, np.float32))
    _suffixed(stem, ".json").write_text(json.dumps(meta, indent=1) + "\n")


def read_shipped(stem: Path, keys: Sequence[str], paths: Sequence[Path],
                 model_name: str) -> tuple[list[str], np.ndarray] | None:
    """(keys, features) of shipped features, or None unless they apply here: same extractor (model,
    pipeline version, weights), every shipped key among ``keys`` and the same bytes in those images."""
    stem = Path(stem)
    try:
        meta = json.loads(_suffixed(stem, ".json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("model") != model_name or \
            meta.get("pipeline_version") != PIPELINE_VERSION:
        return None
    where = dict(zip(keys, paths))
    shipped_keys = meta.get("keys") or []
    if not all(k in where for k in shipped_keys):
        return None
    try:
        if extractor_id(model_name) != {k: meta.get(k) for k in ("model", "pipeline_version", "weights_sha256")} \
                or _sha256([where[k] for k in shipped_keys], shipped_keys) != meta.get("images_sha256"):
            return None
        features = np.load(_suffixed(stem, ".npy"), allow_pickle=False)
    except (OSError, ValueError, DataError):
        return None
    if features.shape != (len(shipped_keys), FEATURE_DIMS[model_name]) or features.dtype != np.float32:
        return None
    return shipped_keys, features


def cached_features(folder: Path, keys: Sequence[str], paths: Sequence[Path], model_name: str,
                    download: bool = False, progress: ProgressArg = True,
                    shipped: Path | None = None) -> np.ndarray:
    """Features of ``paths`` in ``keys`` order, read from ``folder`` or computed and saved there.

    Only keys not stored yet are computed; they are appended to the stored ones (same two files),
    so a viewer can ask for the test images first and the train images later. They are saved every
    ``SAVE_EVERY`` images, so an interrupted build (a dashboard rerun) keeps what it had done.
    Missing keys found in ``shipped`` features (the stem ``write_shipped`` wrote) are copied from
    there instead, if ``read_shipped`` says they apply; otherwise they are computed.
    """
    folder = Path(folder)
    array_path = folder / f"features_{model_name}.npy"
    keys_path = folder / f"features_{model_name}.json"
    keys = list(keys)
    stored_keys, stored = _read_cache(array_path, keys_path, model_name)
    position = {k: i for i, k in enumerate(stored_keys)}
    missing = [i for i, k in enumerate(keys) if k not in position]
    found = read_shipped(shipped, keys, paths, model_name) if shipped is not None and missing else None
    take = [] if found is None else [j for j, k in enumerate(found[0]) if k not in position]
    if take:
        position.update({found[0][j]: len(stored_keys) + n for n, j in enumerate(take)})
        stored_keys = stored_keys + [found[0][j] for j in take]
        stored = np.concatenate([stored, found[1][take]]) if len(stored) else found[1][take]
        _write_cache(array_path, keys_path, stored_keys, stored)
        missing = [i for i, k in enumerate(keys) if k not in position]
    report = reporter(progress)
    for start in range(0, len(missing), SAVE_EVERY):
        block = missing[start:start + SAVE_EVERY]
        new = extract_features([paths[i] for i in block], model_name, download=download,
                               progress=lambda d, t, w, s=start: report(s + d, len(missing), w))
        for j, i in enumerate(block):
            position[keys[i]] = len(stored_keys) + j
        stored_keys = stored_keys + [keys[i] for i in block]
        stored = np.concatenate([stored, new]) if len(stored) else new
        _write_cache(array_path, keys_path, stored_keys, stored)
    return stored[[position[k] for k in keys]]


def _write_cache(array_path: Path, keys_path: Path, keys: list[str], features: np.ndarray) -> None:
    """Replace a feature cache's two files (each atomically)."""
    array_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_keys, tmp_array = keys_path.with_suffix(".tmp"), array_path.with_suffix(".tmp.npy")
    tmp_keys.write_text(json.dumps(keys))
    np.save(tmp_array, features)
    os.replace(tmp_array, array_path)
    os.replace(tmp_keys, keys_path)
