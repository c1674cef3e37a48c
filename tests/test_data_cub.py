"""Synthetic CUB generator, real-layout CUB loader, caption vocabulary and CUB pair building."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.config import DataConfig
from engine.data import synth_birds as sb
from engine.data.cub import Vocab, build_cub, load_cub
from engine.errors import ConfigError, DataError

N_IMAGES, SIZE = 48, 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return sb.write_synthetic_cub(tmp_path_factory.mktemp("cub") / "root", n_images=N_IMAGES, seed=3,
                                  image_size=SIZE)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_generator_is_deterministic(tiny, tmp_path):
    again = sb.write_synthetic_cub(tmp_path / "again", n_images=N_IMAGES, seed=3, image_size=SIZE)
    other = sb.write_synthetic_cub(tmp_path / "other", n_images=N_IMAGES, seed=4, image_size=SIZE)
    files = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((tiny / f).is_file() for f in files)
    picked = [f for f in files if f.suffix in (".jpg", ".txt")][::7] + [Path("synthetic_attributes.json")]
    assert len(picked) > 5
    assert all(_digest(tiny / f) == _digest(again / f) for f in picked)
    other_images = sorted(other.rglob("*.jpg"))
    assert _digest(sorted(tiny.rglob("*.jpg"))[0]) != _digest(other_images[0])


def test_writes_the_cub_layout(tiny):
    cub = tiny / "CUB_200_2011"
    for name in ("images.txt", "image_class_labels.txt", "classes.txt", "train_test_split.txt"):
        assert (cub / name).is_file(), name
    rows = [line.split() for line in (cub / "images.txt").read_text().splitlines()]
    assert [int(r[0]) for r in rows] == list(range(1, N_IMAGES + 1))
    classes = dict(line.split() for line in (cub / "classes.txt").read_text().splitlines())
    for _, rel in rows:
        folder, file = rel.split("/")
        assert re.fullmatch(r"\d{3}\.[A-Za-z_]+", folder) and folder in classes.values()
        assert re.fullmatch(re.escape(folder[4:]) + r"_\d{4}\.jpg", file)
        assert (cub / "images" / rel).is_file()
        captions = (tiny / "cub_text" / "text_c10" / folder / file.replace(".jpg", ".txt")).read_text()
        assert len([c for c in captions.splitlines() if c.strip()]) == 10
    from PIL import Image
    with Image.open(cub / "images" / rows[0][1]) as im:
        assert im.size == (SIZE, SIZE) and im.mode == "RGB"


def _caption_violations(caption: str, attrs: dict) -> list[str]:
    """Statements in a caption that contradict the image's attributes."""
    colour_of = {w: c for c, words in sb.COLOUR_WORDS.items() for w in words}
    part_of = {w: p for p, words in sb.PART_WORDS.items() for w in words}
    attr_key = {"eye": "eye", "legs": "legs", "bill": "bill_colour"}
    colours = "|".join(sorted(colour_of, key=len, reverse=True))
    parts = "|".join(sorted(part_of, key=len, reverse=True))
    image_colours = {attrs[k] for k in sb.PLUMAGE_PARTS + ("eye", "legs", "bill_colour")}
    if attrs["wing_pattern"] != "solid":
        image_colours.add(attrs["pattern_colour"])
    bad = [w for w in re.findall(r"[a-z]+", caption) if w in colour_of and colour_of[w] not in image_colours]
    for colour, part in re.findall(rf"\b({colours}) ({parts})\b", caption):
        key = attr_key.get(part_of[part], part_of[part])
        bad += [f"{colour} {part}"] if attrs[key] != colour_of[colour] else []
    for part, colour in re.findall(rf"\b({parts}) (?:that )?(?:is|are) ({colours})\b", caption):
        key = attr_key.get(part_of[part], part_of[part])
        bad += [f"{part} is {colour}"] if attrs[key] != colour_of[colour] else []
    sizes = [s for s, words in sb.SIZE_WORDS.items() for w in words if re.search(rf"\b{w}\b", caption)]
    sizes = [s for s in sizes if not (s == "small" and "very small" in sizes)]
    bad += [f"size {s}" for s in sizes if s != attrs["size"]]
    for shape, words in sb.BILL_SHAPE_WORDS.items():
        if shape != attrs["bill_shape"] and any(re.search(rf"\b{w} (?:\w+ )?(?:bill|beak)\b", caption) for w in words):
            bad.append(f"bill {shape}")
    for length, words in sb.BILL_LENGTH_WORDS.items():
        if length != attrs["bill_length"] and any(re.search(rf"\b{w} (?:[\w-]+ )*?(?:bill|beak)\b", caption)
                                                  for w in words):
            bad.append(f"bill {length}")
    return bad


def test_captions_describe_only_their_own_image(tiny):
    meta = json.loads((tiny / "synthetic_attributes.json").read_text())["images"]
    text = tiny / "cub_text" / "text_c10"
    n_checked = 0
    for info in meta.values():
        captions = (text / info["path"]).with_suffix(".txt").read_text().splitlines()
        for caption in captions:
            assert not _caption_violations(caption, info["attributes"]), (caption, info["attributes"])
            n_checked += 1
    assert n_checked == 10 * N_IMAGES


def test_caption_checker_catches_wrong_attributes(tiny):
    info = next(iter(json.loads((tiny / "synthetic_attributes.json").read_text())["images"].values()))
    attrs = info["attributes"]
    wrong = next(c for c in sb.COLOURS if c not in {attrs[k] for k in sb.PLUMAGE_PARTS})
    assert _caption_violations(f"this bird has a {wrong} crown.", attrs)
    assert _caption_violations(f"a bird with wings that are {wrong}.", attrs)


def test_captions_differ_within_a_species(tiny):
    meta = json.loads((tiny / "synthetic_attributes.json").read_text())["images"]
    by_class: dict[int, list[str]] = {}
    for info in meta.values():
        by_class.setdefault(info["class_id"], []).append(
            (tiny / "cub_text" / "text_c10" / info["path"]).with_suffix(".txt").read_text())
    for files in by_class.values():
        assert len(set(files)) == len(files)
        first = files[0].splitlines()
        assert len(set(first)) >= 8


def test_loader_reads_layout_with_class_disjoint_split(tiny):
    train, test = load_cub(tiny, "train"), load_cub(tiny, "test")
    assert len(train.keys) + len(test.keys) == N_IMAGES
    assert not set(train.labels.tolist()) & set(test.labels.tolist())
    assert len(set(test.labels.tolist())) >= 1 and all(len(c) == 10 for c in train.captions)
    assert all(p.is_file() for p in train.paths)
    meta = json.loads((tiny / "synthetic_attributes.json").read_text())["images"]
    assert [meta[str(i)]["class_id"] - 1 for i in train.image_ids] == train.labels.tolist()


def test_loader_splits_by_class_when_split_file_is_per_image(tiny, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(tiny, root)
    for name in ("trainvalclasses.txt", "testclasses.txt"):
        (root / "cub_text" / name).unlink()
    ids = [line.split()[0] for line in (root / "CUB_200_2011" / "images.txt").read_text().splitlines()]
    (root / "CUB_200_2011" / "train_test_split.txt").write_text("\n".join(f"{i} {int(i) % 2}" for i in ids))
    shutil.move(root / "cub_text" / "text_c10", root / "text_c10")
    train, test = load_cub(root, "train"), load_cub(root, "test")
    assert set(test.labels.tolist()) == {c - 1 for c in range(1, 6) if c % 4 == 0}
    assert not set(train.labels.tolist()) & set(test.labels.tolist())


def test_missing_root_names_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        load_cub(missing, "train")
    with pytest.raises(DataError, match="--data-root"):
        build_cub(DataConfig(dataset="cub"))


def test_malformed_metadata_is_a_data_error(tiny, tmp_path):
    import shutil

    root = tmp_path / "bad"
    shutil.copytree(tiny, root)
    (root / "CUB_200_2011" / "image_class_labels.txt").write_text("1\n2 x\n")
    with pytest.raises(DataError, match="image_class_labels"):
        load_cub(root, "train")


def test_vocab_round_trip_unknown_and_empty(tmp_path):
    captions = ["This bird has a RED crown.", "a bird with a red crown", "the bird has a red crown!"] * 2
    vocab = Vocab.build(captions + ["a red bird with a crown and wings"])
    assert vocab.itos[:3] == ["<pad>", "<eos>", "<unk>"]
    assert "with" in vocab.stoi and "this" not in vocab.stoi and "and" not in vocab.stoi   # min count 3
    ids, unknown = vocab.encode("A red crown, with a bird.")
    assert ids.shape == (32,) and ids.dtype == torch.int64 and unknown == []
    assert vocab.decode(ids) == "a red crown with a bird"
    assert (ids[7:] == 0).all() and ids[6] == 1
    ids, unknown = vocab.encode("a zebra crown and wings")
    assert unknown == ["zebra", "and", "wings"] and vocab.decode(ids) == "a <unk> crown <unk> <unk>"
    long_ids, _ = vocab.encode(" ".join(["red"] * 50))
    assert long_ids[-1] == 1 and (long_ids[:-1] == vocab.stoi["red"]).all()
    for empty in ("", "  ...  "):
        with pytest.raises(ConfigError, match="empty"):
            vocab.encode(empty)
    vocab.save(tmp_path / "v.json")
    loaded = Vocab.load(tmp_path / "v.json")
    assert loaded.itos == vocab.itos and torch.equal(loaded.encode("a red bird")[0], vocab.encode("a red bird")[0])


def test_vocab_says_what_a_caption_loses():
    """Words past the 31st and letters outside a-z are reported (a warning from encode), not cut silently."""
    vocab = Vocab(["a", "bird"])
    with pytest.warns(UserWarning, match="only the first 31 are read"):
        vocab.encode("a bird " * 20)
    with pytest.warns(UserWarning, match="letters outside a-z.*é"):
        vocab.encode("a café bird")
    assert vocab.cuts("a small bird") == []


def test_build_cub_pairs_each_image_with_its_captions(tiny, monkeypatch):
    calls = []

    def fake_extract(images, model_name, batch_size=32, download=False, progress=True):
        calls.append(len(images))
        return np.stack([np.full(1280, i, np.float32) for i in range(len(images))])

    monkeypatch.setattr("engine.data.features.extract_features", fake_extract)
    cfg = DataConfig(dataset="cub-synthetic", root=str(tiny), data_fraction=0.5, seed=1)
    data = build_cub(cfg)
    assert data.names == ("image", "caption") and calls == [N_IMAGES]
    n_train_images = data.unimodal["train"]["image"][0].shape[0]
    assert len(data.train) == 10 * n_train_images and len(data.test) == 10 * len(data.image_ids["test"])
    full_train = load_cub(tiny, "train")
    counts = np.bincount(full_train.labels)
    kept = np.bincount(data.unimodal["train"]["image"][1].numpy(), minlength=counts.size)
    assert (kept[counts > 0] == np.maximum(1, np.rint(0.5 * counts[counts > 0]))).all()
    (image, caption), label = data.train[13]
    img_row, cap_row = data.train.index[13].tolist()
    assert caption.dtype == torch.int64 and caption.shape == (32,) and image.shape == (1280,)
    assert data.caption_image["train"][cap_row] == img_row
    assert label == int(data.unimodal["train"]["image"][1][img_row])
    assert data.vocab.decode(caption) == " ".join(Vocab.tokenize(data.captions_text["train"][cap_row]))
    path = data.image_paths["train"][img_row]
    assert data.captions_text["train"][cap_row] in (tiny / "cub_text" / "text_c10" / path.parent.name /
                                                    path.with_suffix(".txt").name).read_text()
    assert build_cub(cfg).image_ids == data.image_ids and calls == [N_IMAGES]      # features cached


def _path_features(images):
    """Stand-in features that depend only on each image's key (so build order cannot matter)."""
    keys = [f"{Path(p).parent.name}/{Path(p).name}" for p in images]
    return np.stack([np.full(1280, int(hashlib.sha256(k.encode()).hexdigest()[:6], 16), np.float32) for k in keys])


def test_test_split_first_then_the_rest_equals_one_full_build(tiny, tmp_path, monkeypatch):
    import shutil

    calls = []
    monkeypatch.setattr("engine.data.features.extract_features",
                        lambda images, *a, **k: calls.append(len(images)) or _path_features(images))
    fresh_copy = shutil.ignore_patterns("features_*", "vocab.json")      # the images, none of the caches
    root = Path(shutil.copytree(tiny, tmp_path / "root", ignore=fresh_copy))
    cfg = DataConfig(dataset="cub-synthetic", root=str(root), seed=1)
    test_only = build_cub(cfg, progress=False, splits=("test",))
    n_test = len(load_cub(root, "test").keys)
    assert calls == [n_test] and "train" not in test_only.unimodal and len(test_only.train) == 0
    assert len(test_only.test) == 10 * n_test and len(test_only.vocab) > 3
    full = build_cub(cfg, progress=False)
    assert calls == [n_test, N_IMAGES - n_test]                 # only the train images were added
    fresh = tmp_path / "fresh"
    shutil.copytree(tiny, fresh, ignore=fresh_copy)
    one_pass = build_cub(DataConfig(dataset="cub-synthetic", root=str(fresh), seed=1), progress=False)
    for s in ("train", "test"):
        assert torch.equal(full.unimodal[s]["image"][0], one_pass.unimodal[s]["image"][0])
    assert torch.equal(test_only.unimodal["test"]["image"][0], full.unimodal["test"]["image"][0])
    assert test_only.vocab.itos == full.vocab.itos
    with pytest.raises(ConfigError):
        build_cub(cfg, progress=False, splits=("validation",))


def test_cold_build_reports_drawing_then_features(tmp_path, monkeypatch):
    monkeypatch.setattr("engine.data.features.extract_features", _features_with_progress)
    monkeypatch.setattr(sb, "N_IMAGES", 12)                           # 12 tiny birds for the default root
    monkeypatch.setattr(sb, "IMAGE_SIZE", 32)
    monkeypatch.setenv("CMVAE_CACHE", str(tmp_path))
    seen = []
    build_cub(DataConfig(dataset="cub-synthetic"), progress=lambda d, t, w: seen.append((d, t, w)),
              splits=("test",))
    stages = list(dict.fromkeys(w for _, _, w in seen))
    assert stages == [sb.DRAWING, "features"]
    for stage in stages:
        done = [(d, t) for d, t, w in seen if w == stage]
        assert done[0][0] == 0 and done[-1][0] == done[-1][1] > 0
        assert [d for d, _ in done] == sorted(d for d, _ in done)
    assert (tmp_path / "cub-synthetic" / "CUB_200_2011" / "images.txt").is_file()


def _features_with_progress(images, model_name, batch_size=32, download=False, progress=True):
    from engine.progress import reporter

    report = reporter(progress)
    for i in range(len(images) + 1):
        report(i, len(images), "features")
    return _path_features(images)


def test_data_prepare_builds_the_offline_birds_and_their_features(tmp_path, monkeypatch, capsys):
    from engine.cli import main

    monkeypatch.setattr("engine.data.features.extract_features", _features_with_progress)
    monkeypatch.setattr(sb, "N_IMAGES", 12)
    monkeypatch.setattr(sb, "IMAGE_SIZE", 32)
    monkeypatch.setenv("CMVAE_CACHE", str(tmp_path))
    assert main(["data", "prepare", "--dataset", "cub-synthetic"]) == 0
    root = tmp_path / "cub-synthetic"
    keys = json.loads((root / "features_efficientnet-lite0.json").read_text())
    assert sorted(keys) == sorted(load_cub(root, "train").keys + load_cub(root, "test").keys) and len(keys) == 12
    out = capsys.readouterr()
    assert "cub-synthetic:" in out.out and "ready" in out.out and sb.DRAWING in out.err


def _ship(root: Path, folder: Path) -> tuple[Path, np.ndarray]:
    """Shipped stand-in features of ``root``'s test images in ``folder``: (stem, features)."""
    from engine.data.cub import shipped_stem
    from engine.data.features import write_shipped

    test = load_cub(root, "test")
    stem, feats = shipped_stem("efficientnet-lite0", folder), _path_features(test.paths) + 0.5
    write_shipped(stem, test.keys, test.paths, feats, "efficientnet-lite0", about="test")
    return stem, feats


def _fresh_root(tiny: Path, where: Path) -> Path:
    import shutil

    return Path(shutil.copytree(tiny, where, ignore=shutil.ignore_patterns("features_*", "vocab.json")))


def test_shipped_features_fill_an_empty_cache_without_extraction(tiny, tmp_path, monkeypatch):
    import engine.data.cub as cub

    root = _fresh_root(tiny, tmp_path / "root")
    _, shipped = _ship(root, tmp_path / "shipped")
    monkeypatch.setattr(cub, "SHIPPED_FEATURES", tmp_path / "shipped")

    def no_extraction(images, *a, **k):
        raise AssertionError(f"features extracted for {len(images)} images")

    monkeypatch.setattr("engine.data.features.extract_features", no_extraction)
    cfg = DataConfig(dataset="cub-synthetic", root=str(root), seed=1)
    data = build_cub(cfg, progress=False, splits=("test",))
    assert np.array_equal(data.unimodal["test"]["image"][0].numpy(), shipped)
    assert len(json.loads((root / "features_efficientnet-lite0.json").read_text())) == len(shipped)
    calls = []
    monkeypatch.setattr("engine.data.features.extract_features",
                        lambda images, *a, **k: calls.append(len(images)) or _path_features(images))
    full = build_cub(cfg, progress=False)
    assert calls == [N_IMAGES - len(shipped)]                   # the train images only
    assert np.array_equal(full.unimodal["test"]["image"][0].numpy(), shipped)


@pytest.mark.parametrize("tamper", ["pipeline", "weights", "image", "keys"])
def test_shipped_features_that_do_not_apply_are_ignored(tiny, tmp_path, monkeypatch, tamper):
    import engine.data.cub as cub
    import engine.data.features as features

    root = _fresh_root(tiny, tmp_path / "root")
    stem, shipped = _ship(root, tmp_path / "shipped")
    monkeypatch.setattr(cub, "SHIPPED_FEATURES", tmp_path / "shipped")
    meta_path = stem.with_name(stem.name + ".json")
    meta = json.loads(meta_path.read_text())
    if tamper == "pipeline":                                   # the extraction code changed
        monkeypatch.setattr(features, "PIPELINE_VERSION", features.PIPELINE_VERSION + 1)
    elif tamper == "weights":                                  # other network weights
        meta_path.write_text(json.dumps({**meta, "weights_sha256": "0" * 64}))
    elif tamper == "image":                                    # the birds generator draws differently
        first = load_cub(root, "test").paths[0]
        first.write_bytes(first.read_bytes() + b"\0")
    else:                                                      # computed for images this root lacks
        meta_path.write_text(json.dumps({**meta, "keys": meta["keys"][:-1] + ["999.Nowhere/x.jpg"]}))
    calls = []
    monkeypatch.setattr("engine.data.features.extract_features",
                        lambda images, *a, **k: calls.append(len(images)) or _path_features(images))
    data = build_cub(DataConfig(dataset="cub-synthetic", root=str(root), seed=1), progress=False, splits=("test",))
    assert calls == [len(shipped)]
    assert np.array_equal(data.unimodal["test"]["image"][0].numpy(), _path_features(load_cub(root, "test").paths))
