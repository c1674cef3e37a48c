"""Label propagation (engine/propagate.py) and the Siamese baseline (engine/siamese.py)."""
import json

import numpy as np
import pytest
import torch

from engine.config import DataConfig
from engine.data.pairing import pair_by_label
from engine.data.paired import MultimodalData, PairedDataset
from engine.errors import CheckpointError, ConfigError, DataError
from engine.propagate import PropagateSettings, make_splits, propagate, restrict, subsample_balanced


def label_data(n=60, classes=5, dm=3, seed=0):
    """Index-only stand-in for MultimodalData: two unimodal sets of n items, paired by label."""
    g = np.random.default_rng(seed)
    la, lb = g.integers(0, classes, n), g.integers(0, classes, 2 * n)
    xa, xb = torch.zeros(n, 2), torch.zeros(2 * n, 3)
    ia, ib = pair_by_label(la, lb, dm, seed)
    index = torch.from_numpy(np.stack([ia, ib], 1))
    la_t, lb_t = torch.from_numpy(la), torch.from_numpy(lb)
    train = PairedDataset((xa, xb), index, la_t[index[:, 0]], ("a", "b"))
    uni = {"a": (xa, la_t), "b": (xb, lb_t)}
    return MultimodalData(("a", "b"), train, train, {"train": uni, "test": uni}, {})


def rows(a):
    return {tuple(r) for r in np.asarray(a).tolist()}


@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_splits_are_disjoint_and_sized(fraction):
    data = label_data()
    la, lb = (data.unimodal["train"][n][1].numpy() for n in ("a", "b"))
    sp = make_splits(data, fraction, seed=3)
    P = len(data.train)
    n_sr = round(fraction * P)
    assert len(sp.Fr) == P and len(sp.sr_pos) == n_sr and len(sp.fm_pos) == P - n_sr
    assert np.intersect1d(sp.sr_pos, sp.fm_pos).size == 0
    assert np.array_equal(np.sort(np.r_[sp.sr_pos, sp.fm_pos]), np.arange(P))
    # Fm: the rest of Fr, plus as many unrelated pairs (labels differ)
    assert len(sp.Fm) == 2 * (P - n_sr) and sp.Fm_related.sum() == P - n_sr
    np.testing.assert_array_equal(np.sort(sp.Fm[sp.Fm_related], 0), np.sort(sp.Fr[sp.fm_pos], 0))
    unrel = sp.Fm[~sp.Fm_related]
    assert (la[unrel[:, 0]] != lb[unrel[:, 1]]).all()
    assert (la[sp.Fm[sp.Fm_related][:, 0]] == lb[sp.Fm[sp.Fm_related][:, 1]]).all()
    # Sm: Sr's pairs plus as many re-matchings of Sr's own items, labels differing
    assert len(sp.Sm) == 2 * n_sr and sp.Sm_related.sum() == n_sr
    np.testing.assert_array_equal(sp.Sm[sp.Sm_related], sp.Sr)
    re = sp.Sm[~sp.Sm_related]
    assert set(re[:, 0]) <= set(sp.Sr[:, 0]) and set(re[:, 1]) <= set(sp.Sr[:, 1])
    assert (la[re[:, 0]] != lb[re[:, 1]]).all()
    assert sp.sizes() == {"Fr": P, "Sr": n_sr, "Fm": 2 * (P - n_sr), "Fm_related": P - n_sr,
                          "Sm": 2 * n_sr, "Sm_related": n_sr}
    again = make_splits(data, fraction, seed=3)
    np.testing.assert_array_equal(again.Fm, sp.Fm)


def test_split_errors_and_restrict():
    data = label_data()
    with pytest.raises(ConfigError):
        make_splits(data, 1.0)
    with pytest.raises(DataError):
        make_splits(data, 1e-4)
    sp = make_splits(data, 0.2)
    small = restrict(data, sp.Sr)
    assert len(small.train) == len(sp.sr_pos) and small.test is data.test
    np.testing.assert_array_equal(small.train.index.numpy(), sp.Sr)


def test_subsample_balanced_keeps_proportions():
    related = np.r_[np.ones(30, bool), np.zeros(70, bool)]
    keep = subsample_balanced(related, 20, seed=0)
    assert len(keep) == 20 and related[keep].sum() == 6 and len(set(keep)) == 20
    assert len(subsample_balanced(related, None, 0)) == 100


def tiny_settings(model, **kw):
    return PropagateSettings(model=model, related_fraction=0.05, K=2, negatives=2, epochs=1, max_steps=2,
                             batch_size=16, device="cpu", fm_pairs=40, eval_pairs=8, **kw)


@pytest.fixture(scope="module")
def tiny_data():
    from engine.registry import build_data

    cfg = DataConfig(data_fraction=0.05, dm=1)
    return cfg, build_data(cfg)


def _check_report(res):
    for k in ("precision", "recall", "f1", "accuracy", "auc_Fm"):
        assert 0.0 <= res[k] <= 1.0, (k, res[k])
    assert res["tp"] + res["fp"] + res["tn"] + res["fn"] == res["sizes"]["Fm_scored"] == 40
    assert res["sizes"]["Sr"] == round(0.05 * res["sizes"]["Fr"]) and res["sizes"]["Sm"] == 2 * res["sizes"]["Sr"]


def test_pipeline_end_to_end_with_retrain(tiny_data, tmp_path, monkeypatch):
    import engine.propagate

    calls = []
    monkeypatch.setattr(engine.propagate, "evaluate", lambda run_dir, **kw: calls.append(run_dir) or {"stub": 1})
    cfg, data = tiny_data
    res = propagate(tiny_settings("cI-MMVAE", retrain=True), cfg, tmp_path, data=data, progress=False)
    _check_report(res)
    assert res["model"] == "cI-MMVAE"
    r = res["retrain"]
    assert r["pairs"] == res["sizes"]["Sr"] + r["predicted_related"] == res["sizes"]["Sr"] + res["tp"] + res["fp"]
    for when in ("before", "after"):
        assert 0 <= r[when]["relatedness_auc"] <= 1 and r[when]["evaluate"] == {"stub": 1}
    assert calls == [tmp_path / "g", tmp_path / "retrained"]
    assert json.loads((tmp_path / "propagate.json").read_text())["f1"] == res["f1"]


def test_siamese_baseline(tiny_data, tmp_path):
    from engine.siamese import load_siamese

    cfg, data = tiny_data
    res = propagate(tiny_settings("siamese"), cfg, tmp_path, data=data, progress=False)
    _check_report(res)
    assert res["model"] == "Siamese"
    net = load_siamese(tmp_path / "siamese.pt", "cpu")
    x, y = data.test.batch(torch.arange(4))[0]
    s = net.score(x, y)
    assert s.shape == (4,) and (s <= 0).all()
    with pytest.raises(ConfigError):
        propagate(tiny_settings("siamese", retrain=True), cfg, tmp_path / "r", data=data, progress=False)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_siamese(tmp_path / "bad.pt")


def test_contrastive_margin_loss():
    from engine.siamese import contrastive_margin_loss

    d = torch.tensor([0.5, 0.5, 2.0])
    r = torch.tensor([True, False, False])
    torch.testing.assert_close(contrastive_margin_loss(d, r, 1.0), torch.tensor([0.125, 0.125, 0.0]))
