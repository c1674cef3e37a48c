"""PMI scoring, thresholds and the relatedness CLI (engine/relatedness.py)."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from engine.config import ObjectiveConfig
from engine.data.pairing import pair_by_label
from engine.data.paired import MultimodalData, PairedDataset
from engine.errors import ConfigError, DataError
from engine.loss import variant_loss
from engine.models import MMVAE, build_model
from engine.models.modalities import LaplaceModality
from engine.relatedness import (ItemNoise, classification_report, evaluate_relatedness, fit_threshold,
                                score_index, score_matrix, score_pairs, split_fit_report)


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.rand(n, 3, 32, 32, generator=g)


class Vec(LaplaceModality):
    """A small vector modality for toy models (MLP encoder and decoder)."""

    name = "vec"

    def __init__(self, latent_dim, dim=8, hidden=32):
        super().__init__(latent_dim)
        self.event_shape, self.n_dims = (dim,), dim
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))


class Constant(nn.Module):
    """A decoder that ignores z: a learned constant of the event's shape."""

    def __init__(self, shape):
        super().__init__()
        self.value = nn.Parameter(torch.rand(shape))

    def forward(self, z):
        return self.value.expand(z.shape[0], *self.value.shape)


def toy_data(n_per_class=40, classes=4, dim=8, seed=0):
    """Modality y is a fixed function of x's class; x is its class prototype plus small noise."""
    g = torch.Generator().manual_seed(seed)
    proto_x = 3 * torch.randn(classes, dim, generator=g)
    proto_y = 3 * torch.randn(classes, dim, generator=g)

    def split(s):
        labels = torch.arange(classes).repeat_interleave(n_per_class)
        x = proto_x[labels] + 0.1 * torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(seed + s))
        y = proto_y[labels]
        ia, ib = pair_by_label(labels.numpy(), labels.numpy(), 2, s)
        index = torch.from_numpy(np.stack([ia, ib], 1))
        return PairedDataset((x, y), index, labels[index[:, 0]], ("x", "y")), {"x": (x, labels), "y": (y, labels)}

    (train, utrain), (test, utest) = split(1), split(2)
    return MultimodalData(("x", "y"), train, test, {"train": utrain, "test": utest}, {})


@pytest.fixture(scope="module")
def toy_model():
    """A tiny MMVAE trained briefly on toy_data (a few seconds)."""
    torch.manual_seed(0)
    data = toy_data()
    model = MMVAE([Vec(2), Vec(2)], latent_dim=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        xs, _ = data.train.batch(torch.randint(0, len(data.train), (64,), generator=gen))
        loss = variant_loss(model, xs, ObjectiveConfig(K=4)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), data


# ---- PMI ---------------------------------------------------------------------------------------
def test_pmi_is_zero_when_decoders_ignore_z():
    """With likelihoods independent of z, log p(x,y) = log p(x) + log p(y): PMI ~ 0 for every pair,
    although each term is in the thousands (the likelihood scaling must cancel exactly)."""
    torch.manual_seed(0)
    model = build_model("mnist-svhn", "mmvae", latent_dim=4).eval()
    x, y = _images(6)
    live = score_pairs(model, x, y, K=20)
    for mod in model.mods:
        mod.decoder = Constant(mod.event_shape)
    pmi = score_pairs(model, x, y, K=20)
    assert np.abs(pmi).max() < 0.5, pmi
    assert np.abs(live).max() > 5 * np.abs(pmi).max(), (live, pmi)      # the check can fail


def test_related_pairs_score_higher_on_a_toy_model(toy_model):
    model, data = toy_model
    res = evaluate_relatedness(model, data, n_pairs=60, K=8, seed=0)
    assert res["pmi_related"].shape == res["pmi_unrelated"].shape == (60,)
    assert res["pmi_related"].mean() > res["pmi_unrelated"].mean() + 1.0
    assert res["auc"] > 0.9 and res["average_precision"] > 0.9


@pytest.mark.parametrize("family", ["mmvae", "mvae", "jmvae"])
def test_score_matrix_diagonal_equals_score_pairs(family):
    torch.manual_seed(0)
    model = build_model("mnist-svhn", family, latent_dim=4).eval()
    x, y = _images(5)
    pairs = score_pairs(model, x, y, K=3, batch_size=3, seed=7)
    mat = score_matrix(model, x, y, K=3, seed=7, block=3)
    assert mat.shape == (5, 5)
    np.testing.assert_allclose(np.diag(mat), pairs, rtol=1e-4, atol=2e-3)   # fp32 sums of ~1e4-nat terms
    assert not np.allclose(mat, np.diag(np.diag(mat)))          # off-diagonal entries are real scores
    rect = score_matrix(model, x, y[:3], K=3, seed=7, block=2)    # rectangular, padded edge blocks
    assert rect.shape == (5, 3)
    np.testing.assert_allclose(rect, mat[:, :3], rtol=1e-4, atol=5e-3)
    other = score_pairs(model, x, y, K=3, batch_size=3, seed=8)
    assert not np.allclose(other, pairs)                          # the seed is the noise


def test_scores_do_not_depend_on_batching_and_index_matches_pairs():
    torch.manual_seed(0)
    model = build_model("mnist-svhn", "mmvae", latent_dim=4).eval()
    x, y = _images(5)
    a = score_pairs(model, x, y, K=3, batch_size=2)
    b = score_pairs(model, x, y, K=3, batch_size=5)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-3)
    idx = np.array([[0, 1], [2, 2], [4, 0], [3, 3]])
    c = score_index(model, (x, y), idx, K=3, batch_size=4, piece=3)
    d = score_pairs(model, x[idx[:, 0]], y[idx[:, 1]], K=3, batch_size=4)
    np.testing.assert_allclose(c, d, rtol=1e-4, atol=5e-3)


def test_item_noise_is_a_function_of_the_item():
    n = ItemNoise("normal", K=2, latent_dim=3, seed=1)
    whole = n.take("x", 0, 600)
    assert whole.shape == (2, 600, 3)
    torch.testing.assert_close(n.take("x", 250, 300), whole[:, 250:300])
    assert not torch.equal(n.take("y", 0, 10), whole[:, :10])
    u = ItemNoise("laplace", K=2, latent_dim=3).take("ux", 0, 100)
    assert u.min() >= -0.5 and u.max() < 0.5


def test_bad_inputs_are_reported():
    model = build_model("mnist-svhn", "mmvae", latent_dim=4).eval()
    x, y = _images(3)
    with pytest.raises(DataError):
        score_pairs(model, x, y[:2])
    with pytest.raises(ConfigError):
        score_pairs(model, x, y, K=0)


# ---- thresholds --------------------------------------------------------------------------------
def test_threshold_on_separable_scores_gives_f1_one():
    scores = np.array([0.1, 3.0, -1.0, 2.5, 0.4, 2.0])
    labels = np.array([0, 1, 0, 1, 0, 1])
    t, m = fit_threshold(scores, labels)
    assert 0.4 < t < 2.0
    assert m == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0}
    t2, m2 = fit_threshold(scores, labels, criterion="youden")
    assert 0.4 < t2 < 2.0 and m2["f1"] == 1.0


def test_threshold_criteria_differ_where_they_should():
    # 1 positive far above, 3 positives mixed low among 6 negatives.
    scores = np.array([10, 1, 2, 3, 4, 5, 6, 0.5, 0.4, 0.3])
    labels = np.array([1, 0, 0, 0, 0, 0, 0, 1, 1, 1])
    t, m = fit_threshold(scores, labels, "f1")
    assert m["f1"] == pytest.approx(max(2 * 1 / (1 + 4), 2 * 4 / (4 + 10)))
    rep = classification_report(scores, labels, t)
    assert rep["f1"] == pytest.approx(m["f1"])
    ty, my = fit_threshold(scores, labels, "youden")
    rep_y = classification_report(scores, labels, ty)
    tpr, fpr = rep_y["tp"] / 4, rep_y["fp"] / 6
    assert tpr - fpr == pytest.approx(0.25)       # best J: TPR 1/4 at FPR 0; F1 prefers taking all
    assert 6 < ty < 10 and t <= 0.3
    with pytest.raises(ConfigError):
        fit_threshold(scores, labels, "auc")
    with pytest.raises(DataError):
        fit_threshold(scores, np.ones(10))


def test_classification_report_counts():
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    labels = np.array([True, False, True, True, False, False])
    r = classification_report(scores, labels, 0.5)
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (2, 1, 2, 1)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3) and r["accuracy"] == pytest.approx(4 / 6)
    none = classification_report(scores, labels, 1.0)
    assert (none["tp"], none["fp"], none["precision"], none["f1"]) == (0, 0, 0.0, 0.0)
    with pytest.raises(DataError):
        classification_report(scores, labels[:3], 0.5)
    with pytest.raises(DataError):
        classification_report(scores, np.array([0, 1, 2, 0, 1, 0]), 0.5)


def test_split_fit_report_fits_on_one_half_and_reports_on_the_other():
    rel, unrel = np.arange(100, 110.0), np.arange(0, 10.0)
    res = split_fit_report(rel, unrel, seed=0)
    assert res["f1"] == 1.0 and res["fit"]["f1"] == 1.0 and "note" in res
    assert 9 <= res["threshold"] <= 100
    overlap = split_fit_report(np.r_[rel, 5.0, 6.0], np.r_[unrel, 104.0], seed=1)
    assert overlap["f1"] < 1.0 or overlap["fit"]["f1"] < 1.0


# ---- CLI ---------------------------------------------------------------------------------------
def test_relatedness_cli_writes_files(tiny_run, capsys):
    from engine.cli import main

    run = tiny_run("cI-MMVAE")
    assert main(["relatedness", str(run), "--pairs", "8", "--K", "2", "--json", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((run / "relatedness.json").read_text())
    assert printed == saved
    for key in ("auc", "average_precision", "threshold", "precision", "recall", "f1", "note"):
        assert key in saved
    assert 0 <= saved["auc"] <= 1 and 0 <= saved["f1"] <= 1
    assert np.load(run / "pmi_related.npy").shape == (8,)
    assert np.load(run / "pmi_unrelated.npy").shape == (8,)


def test_roc_pr_curves_match_scikit_learn_with_ties():
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    from engine.thresholds import roc_pr_curves

    rng = np.random.default_rng(3)
    s = np.round(np.r_[rng.normal(1, 1, 300), rng.normal(0, 1, 200)], 1)      # rounded: many ties
    y = np.r_[np.ones(300), np.zeros(200)]
    c = roc_pr_curves(s, y)
    assert c["roc_auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert c["average_precision"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(c["fpr"], fpr)
    np.testing.assert_allclose(c["tpr"], tpr)
    precision, recall, _ = precision_recall_curve(y, s)
    np.testing.assert_allclose(c["precision"], precision[::-1])
    np.testing.assert_allclose(c["recall"], recall[::-1])
    with pytest.raises(DataError, match="both related and unrelated"):
        roc_pr_curves(s[:5], np.ones(5))
