"""CCA coherence (Shi et al. 2019): CCA maths, SIF sentence vectors, true vs shuffled pairs, evaluate_cub."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from engine.data.cub import Vocab
from engine.errors import ConfigError
from engine.metrics import cca
from tests.test_cub_models import tiny_cub_data, tiny_cub_run

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "brown", "grey"]
PARTS = ["wings", "belly", "crown", "tail"]
TEMPLATES = ["a {c} bird with {d} {p}", "this bird has {d} {p} and a {c} body", "the {c} bird is small with {d} {p}"]


def _toy_set(n_images: int, seed: int, W: np.ndarray):
    """Images whose features are a linear map of (body colour, part colour, part) plus noise, and
    five captions each that name those attributes (the caption<->feature relation CCA should find)."""
    rng = np.random.default_rng(seed)
    c, d, p = (rng.integers(0, len(v), n_images) for v in (COLOURS, COLOURS, PARTS))
    onehot = np.concatenate([np.eye(len(COLOURS))[c], np.eye(len(COLOURS))[d], np.eye(len(PARTS))[p]], 1)
    feats = onehot @ W + 0.3 * rng.standard_normal((n_images, W.shape[1]))
    texts = [TEMPLATES[t].format(c=COLOURS[c[i]], d=COLOURS[d[i]], p=PARTS[p[i]])
             for i in range(n_images) for t in rng.integers(0, len(TEMPLATES), 5)]
    caption_image = torch.arange(n_images).repeat_interleave(5)
    return torch.tensor(feats, dtype=torch.float32), texts, caption_image


@pytest.fixture(scope="module")
def toy():
    W = np.random.default_rng(0).standard_normal((2 * len(COLOURS) + len(PARTS), 48))
    train_x, train_t, train_ci = _toy_set(300, 1, W)
    test_x, test_t, test_ci = _toy_set(100, 2, W)
    vocab = Vocab.build(train_t, min_count=1)
    return vocab, (train_x, vocab.encode_many(train_t), train_ci), (test_x, vocab.encode_many(test_t), test_ci)


def test_fit_cca_recovers_the_shared_direction():
    """One shared latent s: x = [s + noise, noise...], y = [noise, s + noise]; the top canonical
    correlation is corr(s + e1, s + e2) = 1 / (1 + sigma^2), the others near 0, and A' Cxx A ~ I."""
    rng = np.random.default_rng(0)
    n, sigma = 20000, 0.5
    s = rng.standard_normal(n)
    X = rng.standard_normal((n, 5))
    Y = rng.standard_normal((n, 3))
    X[:, 2] = s + sigma * rng.standard_normal(n)
    Y[:, 0] = s + sigma * rng.standard_normal(n)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    A, B, rho = cca.fit_cca(Xc.T @ Xc / n, Yc.T @ Yc / n, Xc.T @ Yc / n, k=40, ridge=1e-6)
    assert A.shape == (5, 3) and B.shape == (3, 3)            # k capped by the smaller rank
    assert rho[0] == pytest.approx(1 / (1 + sigma**2), abs=0.02) and rho[1] < 0.05
    assert np.allclose(A.T @ (Xc.T @ Xc / n) @ A, np.eye(3), atol=1e-3)
    u, v = Xc @ A[:, 0], Yc @ B[:, 0]
    assert abs(np.corrcoef(u, v)[0, 1]) == pytest.approx(rho[0], abs=1e-3)


def test_sif_weights_and_averaging_stop_at_eos():
    ids = torch.tensor([[3, 4, 3, 1, 0, 0], [4, 1, 3, 3, 3, 0]])
    w = cca.sif_weights(ids, V=5, eos=1, a=0.5)
    # words counted up to <eos>: 3 x2, 4 x2 -> p = 0.5 each
    assert w[0] == w[1] == 0 and w[3] == pytest.approx(0.5) and w[4] == pytest.approx(0.5)
    assert w[2] == pytest.approx(1.0)                        # <unk> never seen: p = 0
    vectors = np.eye(5, dtype=np.float32)
    avg = cca.weighted_average(ids, vectors, w, eos=1)
    assert np.allclose(avg[0], [0, 0, 0, 2 * 0.5 / 3, 0.5 / 3]) and np.allclose(avg[1], [0, 0, 0, 0, 0.5])


def test_true_pairs_score_clearly_above_shuffled_pairs(toy):
    vocab, train, test = toy
    scorer = cca.fit_scorer(*train, vocab, embedding="ppmi", k=40)
    assert scorer.info["k"] <= len(vocab) and np.all(np.diff(scorer.canonical) <= 1e-9)
    x, ids, ci = test
    true = scorer.correlation(x[ci], ids)
    shuffled = scorer.correlation(x[ci], ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))])
    assert true.mean() > 0.5 and true.mean() > shuffled.mean() + 0.4
    assert np.all(np.abs(true) <= 1 + 1e-9)
    assert np.allclose(scorer.sentence_vectors(ids) @ scorer.pc, 0, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("gensim") is None, reason="gensim not installed")
def test_fasttext_embedding_also_separates_true_pairs(toy):
    vocab, train, test = toy
    scorer = cca.fit_scorer(*train, vocab, embedding="fasttext")
    x, ids, ci = test
    shuffled = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))]
    assert scorer.correlation(x[ci], ids).mean() > scorer.correlation(x[ci], shuffled).mean() + 0.3
    assert scorer.vectors.shape == (len(vocab), cca.EMB_DIM)


def test_scorer_is_cached_on_disk_and_reloads_identically():
    data = tiny_cub_data()
    cca._MEMO.clear()
    first = cca.get_scorer(data, "ppmi")
    assert cca.get_scorer(data, "ppmi") is first
    cca._MEMO.clear()
    again = cca.get_scorer(data, "ppmi")
    assert again is not first and again.info == first.info
    assert all(np.array_equal(a, b) for a, b in zip(first.to_arrays().values(), again.to_arrays().values()))
    with pytest.raises(ConfigError, match="embedding"):
        cca.get_scorer(data, "glove")


@pytest.mark.parametrize("variant", ["cI-MMVAE", "cI-MVAE"])
def test_evaluate_cub_reports_every_coherence(variant):
    import engine

    model = engine.load(tiny_cub_run(variant), "cpu")
    out = cca.evaluate_cub(model, tiny_cub_data(), samples=20, test_pairs=16, progress=False, embedding="ppmi")
    coh = out["cca_coherence"]
    keys = {"joint", "image_to_caption", "caption_to_image", "synergy_joint_to_image", "synergy_joint_to_caption",
            "ground_truth", "shuffled"}
    assert set(coh) == keys
    synergy = [coh["synergy_joint_to_image"], coh["synergy_joint_to_caption"]]
    if variant == "cI-MMVAE":
        assert synergy == [None, None] and out["synergy_note"]
    else:
        assert all(v is not None for v in synergy)
    assert all(-1 <= v <= 1 for v in coh.values() if v is not None)
    assert out["n"] == {"joint_samples": 20, "test_pairs": 16} and not model.training
    again = cca.evaluate_cub(model, tiny_cub_data(), samples=20, test_pairs=16, progress=False, embedding="ppmi")
    assert again["cca_coherence"] == coh


def test_evaluate_writes_cub_coherence_and_retrieval(tmp_path):
    """engine.evaluate on a CUB run: CCA coherence on the asked number of test pairs, plus retrieval."""
    import shutil

    from engine.evaluate import evaluate

    run = tmp_path / "run"
    shutil.copytree(tiny_cub_run("cI-MMVAE"), run)
    out = evaluate(run, samples=8, ll_samples=0, device="cpu", progress=False, test_pairs=8, data=tiny_cub_data())
    assert out["n"]["test_pairs"] == 8 and (run / "metrics.json").is_file()
    assert {"caption_to_image", "image_to_caption", "chance"} <= set(out["retrieval"])
    caps = out["captions"]                      # procedural birds: their attributes are known
    assert caps["n"] == len(tiny_cub_data().test) and 0.0 <= caps["repeated_token_rate"] <= 1.0
    assert set(caps["attribute_coherence"]) == {"coherence", "chance", "mentions", "captions_with_mentions"}
    assert out["alignment"]["n"] == 8                    # capped by test_pairs, like the CCA
