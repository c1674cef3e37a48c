"""CUB-200-2011 images with Reed et al.'s ten captions per image, as an image–caption pair set.

Layout read (the real one, also written by ``synth_birds.write_synthetic_cub``)::

    <root>/CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt, train_test_split.txt, images/}
    <root>/cub_text/text_c10/<NNN.Class_Name>/<image stem>.txt      (or <root>/text_c10/...)

The split is class-disjoint like Shi et al. 2019, who follow Reed et al.'s 150 train / 50
test classes: Reed's ``trainvalclasses.txt`` / ``testclasses.txt`` beside ``text_c10`` if
present; else ``train_test_split.txt`` if it is already class-disjoint; else (the official
CUB file is a per-image split) every fourth class id (4, 8, ..., 200) is a test class.
Class labels are 0-based (CUB class id − 1). Images enter the model as fixed ImageNet
features (``features.py``), captions as padded token ids of a train-caption vocabulary.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.config import DataConfig
from engine.data import features, synth_birds
from engine.data.cache import cache_dir
from engine.data.features import cached_features
from engine.data.paired import SPLITS, MultimodalData, PairedDataset, check_splits, no_pairs
from engine.errors import ConfigError, DataError
from engine.progress import ProgressArg

LAYOUT = ("<root>/CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt, train_test_split.txt, "
          "images/<NNN.Class>/<stem>.jpg} and captions <root>/cub_text/text_c10/<NNN.Class>/<stem>.txt "
          "(or <root>/text_c10/...)")
MAX_LEN = 32
MIN_COUNT = 3
TEST_CLASS_EVERY = 4
TOKEN = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")
SHIPPED_FEATURES = Path(__file__).resolve().parents[2] / "checkpoints" / "features"


def shipped_stem(model_name: str, folder: Path | None = None) -> Path:
    """Where the synthetic birds' shipped test-split features of ``model_name`` live (``.npy`` + ``.json``)."""
    return Path(folder or SHIPPED_FEATURES) / f"cub-synthetic-test_{model_name}"


@dataclass
class CubRecords:
    """One split of CUB: per image its id, path, key (path relative to images/), label and captions."""

    image_ids: list[int]
    paths: list[Path]
    keys: list[str]
    labels: np.ndarray                     # (n,) int64, 0-based class
    captions: list[list[str]]
    class_names: list[str]                 # all classes, indexed by label


def _read_table(path: Path, columns: int) -> list[list[str]]:
    """Whitespace-separated rows of a CUB metadata file, each with exactly ``columns`` fields."""
    if not path.is_file():
        raise DataError(f"CUB file missing: {path}; expected layout {LAYOUT}")
    rows = [line.split(maxsplit=columns - 1) for line in path.read_text().splitlines() if line.strip()]
    bad = next((i for i, r in enumerate(rows) if len(r) != columns), None)
    if bad is not None or not rows:
        raise DataError(f"{path} is malformed (row {bad} does not have {columns} fields, or the file is empty); "
                        f"expected layout {LAYOUT}")
    return rows


def _locate(root: Path) -> tuple[Path, Path]:
    """(CUB_200_2011 folder, text_c10 folder) under ``root``, or one DataError naming what is missing."""
    root = Path(root).expanduser()
    cub = root / "CUB_200_2011" if (root / "CUB_200_2011").is_dir() else root
    texts = [root / "cub_text" / "text_c10", root / "text_c10", cub / "text_c10"]
    text = next((t for t in texts if t.is_dir()), None)
    if not (cub / "images.txt").is_file() or text is None:
        raise DataError(f"no CUB data at {root}: expected layout {LAYOUT}")
    return cub, text


def _test_classes(cub: Path, text: Path, class_ids: np.ndarray, is_train: np.ndarray,
                  folders: dict[int, str]) -> set[int]:
    """Class ids held out for test, following the precedence in the module docstring."""
    train_file, test_file = text.parent / "trainvalclasses.txt", text.parent / "testclasses.txt"
    if train_file.is_file() and test_file.is_file():
        by_folder = {f: c for c, f in folders.items()}
        names = [line.strip() for line in test_file.read_text().splitlines() if line.strip()]
        unknown = [n for n in names if n not in by_folder]
        if unknown:
            raise DataError(f"{test_file} names classes not in classes.txt: {unknown[:3]}")
        return {by_folder[n] for n in names}
    if is_train is not None:
        train_cls, test_cls = set(class_ids[is_train].tolist()), set(class_ids[~is_train].tolist())
        if train_cls and test_cls and not train_cls & test_cls:
            return test_cls
    return {c for c in folders if c % TEST_CLASS_EVERY == 0}


def load_cub(root: Path, split: str) -> CubRecords:
    """Read one split ("train" or "test") of a CUB root laid out as ``LAYOUT``."""
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    cub, text = _locate(Path(root))
    try:
        images = {int(i): p for i, p in _read_table(cub / "images.txt", 2)}
        labels = {int(i): int(c) for i, c in _read_table(cub / "image_class_labels.txt", 2)}
        folders = {int(c): name.strip() for c, name in _read_table(cub / "classes.txt", 2)}
        split_file = cub / "train_test_split.txt"
        flags = {int(i): int(f) for i, f in _read_table(split_file, 2)} if split_file.is_file() else None
    except ValueError as e:
        raise DataError(f"CUB metadata under {cub} is malformed ({e}); expected layout {LAYOUT}") from e
    ids = np.array(sorted(images), dtype=np.int64)
    missing = [i for i in ids.tolist() if i not in labels]
    if missing:
        raise DataError(f"{cub / 'image_class_labels.txt'} has no label for image ids {missing[:5]}")
    class_ids = np.array([labels[i] for i in ids.tolist()], dtype=np.int64)
    is_train = None if flags is None else np.array([flags.get(i, 1) == 1 for i in ids.tolist()])
    test = _test_classes(cub, text, class_ids, is_train, folders)
    keep = ~np.isin(class_ids, list(test)) if split == "train" else np.isin(class_ids, list(test))
    ids, class_ids = ids[keep], class_ids[keep]
    keys = [images[i] for i in ids.tolist()]
    captions = []
    for key in keys:
        cap_file = text / Path(key).with_suffix(".txt")
        if not cap_file.is_file():
            raise DataError(f"caption file missing: {cap_file}; expected layout {LAYOUT}")
        lines = [line.strip() for line in cap_file.read_text(errors="replace").splitlines() if line.strip()]
        if not lines:
            raise DataError(f"caption file {cap_file} has no captions")
        captions.append(lines)
    n_classes = max(folders)
    names = [folders.get(c, str(c)) for c in range(1, n_classes + 1)]
    return CubRecords(image_ids=ids.tolist(), paths=[cub / "images" / k for k in keys], keys=keys,
                      labels=class_ids - 1, captions=captions, class_names=names)


class Vocab:
    """Word vocabulary of the train captions: lower-cased regex words, ids padded to ``MAX_LEN``.

    Id 0 is ``<pad>``, then ``<eos>`` and ``<unk>``; words seen fewer than ``MIN_COUNT`` times map to ``<unk>``.
    """

    PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"

    def __init__(self, words: list[str], max_len: int = MAX_LEN):
        self.itos = [self.PAD, self.EOS, self.UNK] + [w for w in words if w not in (self.PAD, self.EOS, self.UNK)]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.max_len = max_len

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return TOKEN.findall(text.lower())

    @classmethod
    def build(cls, captions: list[str], min_count: int = MIN_COUNT, max_len: int = MAX_LEN) -> "Vocab":
        """Words with at least ``min_count`` occurrences, most frequent first (ties alphabetical)."""
        counts = Counter(w for c in captions for w in cls.tokenize(c))
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(words, max_len)

    def __len__(self) -> int:
        return len(self.itos)

    def cuts(self, text: str) -> list[str]:
        """What encoding ``text`` loses besides unknown words: words past the first max_len - 1 and
        letters outside a-z (accented or other non-ASCII letters), each as a sentence for the user."""
        notes = []
        tokens = self.tokenize(text)
        if len(tokens) > self.max_len - 1:
            notes.append(f"the caption has {len(tokens)} words; only the first {self.max_len - 1} are read "
                         f"(cut: {' '.join(tokens[self.max_len - 1:])!r})")
        foreign = sorted({c for c in text.lower() if unicodedata.category(c).startswith("L") and not "a" <= c <= "z"})
        if foreign:
            notes.append(f"letters outside a-z are not read (they split or drop words): {' '.join(foreign)}")
        return notes

    def encode(self, text: str, warn: bool = True) -> tuple[torch.Tensor, list[str]]:
        """(ids (max_len,) int64: words, <eos>, <pad>...; words not in the vocabulary, in order).

        What ``cuts`` reports is warned about (UserWarning) unless ``warn`` is false."""
        tokens = self.tokenize(text)
        if not tokens:
            raise ConfigError(f"caption {text!r} is empty: it has no words to encode")
        if warn:
            for note in self.cuts(text):
                warnings.warn(note, stacklevel=2)
        tokens = tokens[: self.max_len - 1]
        unknown = [t for t in tokens if t not in self.stoi]
        ids = torch.zeros(self.max_len, dtype=torch.int64)
        ids[: len(tokens) + 1] = torch.tensor([self.stoi.get(t, 2) for t in tokens] + [1])
        return ids, unknown

    def encode_many(self, texts: list[str]) -> torch.Tensor:
        """(n, max_len) int64 ids of many captions."""
        if not texts:
            return torch.zeros(0, self.max_len, dtype=torch.int64)
        long = sum(len(self.tokenize(t)) > self.max_len - 1 for t in texts)
        if long:
            warnings.warn(f"{long} of {len(texts)} captions have more than {self.max_len - 1} words; "
                          "only their first words are read", stacklevel=2)
        return torch.stack([self.encode(t, warn=False)[0] for t in texts])

    def decode(self, ids: torch.Tensor) -> str:
        """Words up to the first <eos> (pads skipped)."""
        words = []
        for i in torch.as_tensor(ids).tolist():
            if i == 1:
                break
            if i != 0:
                words.append(self.itos[i] if 0 <= i < len(self.itos) else self.UNK)
        return " ".join(words)

    def to_json(self) -> str:
        return json.dumps({"itos": self.itos, "max_len": self.max_len})

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: Path) -> "Vocab":
        try:
            d = json.loads(Path(path).read_text())
            return cls(d["itos"][3:], d["max_len"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"cannot read vocabulary {path}: {e}") from e


@dataclass
class CubData(MultimodalData):
    """CUB pairs plus what a viewer needs: vocabulary, image ids/paths and caption text per split."""

    vocab: Vocab | None = None
    image_ids: dict[str, list[int]] = field(default_factory=dict)
    image_paths: dict[str, list[Path]] = field(default_factory=dict)
    captions_text: dict[str, list[str]] = field(default_factory=dict)   # aligned with caption tensor rows
    caption_image: dict[str, torch.Tensor] = field(default_factory=dict)  # caption row -> image row
    class_names: list[str] = field(default_factory=list)
    root: Path | None = None


def _stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of max(1, round(fraction * n_c)) random images of every class c."""
    if fraction >= 1.0:
        return np.arange(labels.size)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(labels.size), labels))
    classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    pos = np.searchsorted(classes, labels[order])
    rank = np.arange(labels.size) - starts[pos]
    take = np.maximum(1, np.rint(fraction * counts)).astype(np.int64)[pos]
    return np.sort(order[rank < take])


def _synthetic_root(cfg: DataConfig, progress: ProgressArg = True) -> Path:
    """The synthetic set's root, generated there (via a temporary folder) if it does not exist yet."""
    root = Path(cfg.root).expanduser() if cfg.root else cache_dir() / "cub-synthetic"
    if (root / "CUB_200_2011" / "images.txt").is_file():
        return root
    if root.exists() and any(root.iterdir()):
        raise DataError(f"{root} exists but holds no synthetic CUB (no CUB_200_2011/images.txt); "
                        f"empty it or choose another root")
    print(f"generating the synthetic CUB set in {root} (one-off) ...", flush=True)
    tmp = root.with_name(root.name + ".partial")
    synth_birds.write_synthetic_cub(tmp, synth_birds.N_IMAGES, image_size=synth_birds.IMAGE_SIZE,
                                    progress=progress)
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists():
        root.rmdir()
    os.replace(tmp, root)
    return root


def _cache_folder(root: Path) -> Path:
    """Where derived files (features, vocabulary) go: the data root if writable, else the user cache."""
    if os.access(root, os.W_OK):
        return root
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    return cache_dir() / "cub-derived" / digest


def _split_tensors(rec: CubRecords, keep: np.ndarray, features: np.ndarray, vocab: Vocab):
    """Image features, caption ids, caption→image map, labels and flat caption text of kept images."""
    captions = [rec.captions[i] for i in keep.tolist()]
    per_image = torch.tensor([len(c) for c in captions], dtype=torch.int64)
    text = [c for cs in captions for c in cs]
    caption_image = torch.repeat_interleave(torch.arange(len(captions)), per_image)
    labels = torch.from_numpy(rec.labels[keep])
    return torch.from_numpy(features[keep]), vocab.encode_many(text), caption_image, labels, text


def build_cub(cfg: DataConfig, progress: ProgressArg = True, splits: tuple[str, ...] = SPLITS) -> CubData:
    """Image–caption pairs of CUB ("cub": real files under cfg.root) or its synthetic stand-in.

    Every train/test image is paired with each of its captions; pair labels are class labels.
    ``data_fraction`` keeps that share of each train class's images (seeded by ``cfg.seed``).
    ``splits`` are the splits whose image features are computed: a test-only build (what retrieval
    needs) skips the train images' features; its ``train`` pairs are empty and ``unimodal``,
    ``image_ids``, ... have no train entry (the vocabulary still comes from the train captions).
    ``progress`` (see ``engine.progress``) hears of the birds drawn and the images featurised.
    The synthetic set's test features come from ``shipped_stem`` when they still apply (see
    ``features.read_shipped``), so a test-only build then only draws the birds.
    """
    cfg.validate()
    built = check_splits(splits)
    if cfg.dataset == "cub-synthetic":
        root = _synthetic_root(cfg, progress)
    elif cfg.dataset == "cub":
        if not cfg.root:
            raise DataError(f"dataset 'cub' needs a data root (--data-root) holding the CUB files: {LAYOUT}; "
                            f"or use dataset 'cub-synthetic' to run offline")
        root = Path(cfg.root).expanduser()
    else:
        raise ConfigError(f"build_cub handles 'cub' and 'cub-synthetic', not {cfg.dataset!r}")
    records = {s: load_cub(root, s) for s in SPLITS}
    derived = _cache_folder(root)
    keys = [k for s in built for k in records[s].keys]
    paths = [p for s in built for p in records[s].paths]
    shipped = shipped_stem(cfg.features) if cfg.dataset == "cub-synthetic" else None
    features = cached_features(derived, keys, paths, cfg.features, cfg.download, progress, shipped)
    offsets = np.cumsum([0] + [len(records[s].keys) for s in built])
    split_features = {s: features[offsets[i]:offsets[i + 1]] for i, s in enumerate(built)}
    vocab = Vocab.build([c for cs in records["train"].captions for c in cs])
    vocab.save(derived / "vocab.json")

    keep = {"train": _stratified_subset(records["train"].labels, cfg.data_fraction, cfg.seed),
            "test": np.arange(len(records["test"].keys))}
    pairs, unimodal, ids, img_paths, texts, cap_img = {}, {}, {}, {}, {}, {}
    for s in built:
        rec = records[s]
        feats, caps, caption_image, labels, text = _split_tensors(rec, keep[s], split_features[s], vocab)
        index = torch.stack([caption_image, torch.arange(caps.shape[0])], dim=1)
        pairs[s] = PairedDataset((feats, caps), index, labels[caption_image], ("image", "caption"))
        unimodal[s] = {"image": (feats, labels), "caption": (caps, labels[caption_image])}
        ids[s] = [rec.image_ids[i] for i in keep[s].tolist()]
        img_paths[s] = [rec.paths[i] for i in keep[s].tolist()]
        texts[s], cap_img[s] = text, caption_image
    for s in SPLITS:
        pairs.setdefault(s, no_pairs(pairs[built[0]]))
    kind = "synthetic CUB stand-in (procedural birds)" if cfg.dataset == "cub-synthetic" else "CUB-200-2011"
    return CubData(
        names=("image", "caption"), train=pairs["train"], test=pairs["test"], unimodal=unimodal,
        sources={"image": f"{cfg.features} ImageNet features of {kind} images at {root}",
                 "caption": f"{kind} captions (text_c10, {len(vocab)}-word vocabulary, max {vocab.max_len} tokens)"},
        vocab=vocab, image_ids=ids, image_paths=img_paths, captions_text=texts, caption_image=cap_img,
        class_names=records["train"].class_names, root=root,
    )


def ship_test_features(folder: Path | None = None, model_name: str = "efficientnet-lite0",
                       progress: ProgressArg = True) -> Path:
    """Compute (never copy) the default synthetic set's test-split features and write them to
    ``shipped_stem(model_name, folder)``; returns that stem."""
    cfg = DataConfig(dataset="cub-synthetic", features=model_name)
    cfg.validate()
    test = load_cub(_synthetic_root(cfg, progress), "test")
    stem = shipped_stem(model_name, folder)
    computed = features.extract_features(test.paths, model_name, progress=progress)
    features.write_shipped(stem, test.keys, test.paths, computed, model_name,
                           about="features of the default synthetic CUB's test images (python -m engine data ship-features)")
    return stem
