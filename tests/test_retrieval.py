"""CUB retrieval (PMI and feature distance), free-text queries, the retrieve CLI, and caption decoding."""
from __future__ import annotations

import json

import pytest
import torch

import engine
from engine import retrieval as R
from engine.captions import MODES, caption_tokens, cub_generations, decode_captions, nearest_images
from engine.errors import ConfigError
from tests.test_cub_models import tiny_cub_data, tiny_cub_run


@pytest.fixture(scope="module")
def model():
    return engine.load(tiny_cub_run("cI-MMVAE"), "cpu")


@pytest.fixture(scope="module")
def data():
    return tiny_cub_data()


QUERY = "a bird with black eyes and a brown back"


# ---- captions ----------------------------------------------------------------------------------
def test_decode_captions_stops_at_eos(data):
    vocab = data.vocab
    want = torch.tensor([vocab.stoi["bird"], vocab.stoi["with"], 1, vocab.stoi["wings"]] + [0] * 28)
    logits = torch.nn.functional.one_hot(want, len(vocab)).float().unsqueeze(0) * 10
    assert decode_captions(logits, vocab) == ["bird with"]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    flat = torch.zeros(50, 32, len(vocab))
    a, b = caption_tokens(flat, "sample", g1), caption_tokens(flat, "sample", g2)
    assert torch.equal(a, b) and a.unique().numel() > 10          # uniform logits: many different tokens
    assert torch.equal(caption_tokens(logits, "sample", g1), want.unsqueeze(0))
    with pytest.raises(ConfigError):
        caption_tokens(logits, "beam")


def test_nearest_images_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    bank, q = torch.randn(50, 7, generator=g), torch.randn(9, 7, generator=g)
    idx = nearest_images(q, bank, k=3)
    brute = ((q[:, None] - bank[None]) ** 2).sum(-1).argsort(-1)[:, :3]
    assert torch.equal(idx, brute)
    assert torch.equal(nearest_images(bank[[4, 9]], bank)[:, 0], torch.tensor([4, 9]))


@pytest.mark.parametrize("mode", MODES)
def test_cub_generations_give_text_and_train_images(model, data, mode):
    out = cub_generations(model, data, mode, n=3, seed=1)
    again = cub_generations(model, data, mode, n=3, seed=1)
    assert out == again
    expect = {"joint": {"output_captions", "output_image_paths"},
              "image_to_caption": {"input_image_paths", "output_captions"},
              "caption_to_image": {"input_captions", "output_image_paths"},
              "reconstruct": {"input_image_paths", "input_captions", "output_captions", "output_image_paths"}}[mode]
    assert expect <= set(out) and all(len(out[k]) == 3 for k in expect)
    train_paths = {str(p) for p in data.image_paths["train"]}
    assert all(p in train_paths for p in out.get("output_image_paths", []))
    assert all(isinstance(c, str) and "<eos>" not in c for c in out.get("output_captions", []))


# ---- retrieval ---------------------------------------------------------------------------------
def test_images_for_caption_by_features(model, data):
    hits, unknown = R.images_for_caption(model, data, QUERY + " zorblax", k=4)
    assert unknown == ["zorblax"] and len(hits) == 4
    scores = [s for _, _, s in hits]
    assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)
    ids, _ = R.encode_query(data, QUERY + " zorblax")
    dist = torch.cdist(R.caption_features(model, ids), data.unimodal["test"]["image"][0])[0]
    assert [i for i, _, _ in hits] == dist.argsort()[:4].tolist()
    assert all(p == str(data.image_paths["test"][i]) for i, p, _ in hits)
    assert R.images_for_caption(model, data, QUERY + " zorblax", k=4) == (hits, unknown)


def test_captions_for_image_by_features_is_deterministic(model, data):
    hits = R.captions_for_image(model, data, 2, k=5)
    assert len(hits) == 5 and len({i for _, _, i in hits}) == 5
    assert all(t == data.captions_text["test"][i] for t, _, i in hits)
    assert [s for _, s, _ in hits] == sorted((s for _, s, _ in hits), reverse=True)
    R.clear_index()
    assert R.captions_for_image(model, data, 2, k=5) == hits
    assert len(R.captions_for_image(model, data, 0, k=10_000)) == len(data.captions_text["test"])


def test_pmi_reranks_the_feature_shortlist(model, data):
    from engine.relatedness import score_matrix

    pool = 6
    hits = R.captions_for_image(model, data, 1, k=3, by="pmi", K=2, pool=pool)
    shortlist = [i for _, _, i in R.captions_for_image(model, data, 1, k=pool)]     # nearest first
    caps = data.unimodal["test"]["caption"][0]
    img = data.unimodal["test"]["image"][0][1:2]
    pmi = torch.from_numpy(score_matrix(model, img, caps[shortlist], K=2)[0])
    top = pmi.topk(3)
    assert [i for _, _, i in hits] == [shortlist[j] for j in top.indices.tolist()]
    assert [s for _, s, _ in hits] == pytest.approx(top.values.tolist(), abs=1e-4)
    assert R.captions_for_image(model, data, 1, k=3, by="pmi", K=2, pool=pool) == hits
    images, unknown = R.images_for_caption(model, data, QUERY, k=2, by="pmi", K=2, pool=4)
    assert len(images) == 2 and unknown == []


def test_bad_queries_are_clear_errors(model, data):
    with pytest.raises(ConfigError, match="empty"):
        R.images_for_caption(model, data, "   ")
    with pytest.raises(ConfigError, match="empty"):
        R.images_for_caption(model, data, "?!")
    with pytest.raises(ConfigError, match="none of the words"):
        R.images_for_caption(model, data, "zorblax quuxish")
    with pytest.raises(ConfigError, match="image index"):
        R.captions_for_image(model, data, len(data.image_paths["test"]))
    with pytest.raises(ConfigError, match="ranking"):
        R.captions_for_image(model, data, 0, by="cosine")
    with pytest.raises(ConfigError, match="k must"):
        R.captions_for_image(model, data, 0, k=0)


def test_retrieve_cli(capsys):
    from engine.cli import main

    run = str(tiny_cub_run("cI-MMVAE"))
    assert main(["retrieve", run, "--caption", QUERY + " zorblax", "--k", "3", "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["unknown_words"] == ["zorblax"] and len(out["images"]) == 3
    assert main(["retrieve", run, "--image", "0", "--k", "2", "--device", "cpu"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    assert main(["retrieve", run, "--caption", "zorblax", "--device", "cpu"]) == 2
    assert "none of the words" in capsys.readouterr().err


def test_retrieval_metrics_on_the_model_and_at_the_extremes(model, data, monkeypatch):
    """recall@k of the true partner among n test pairs: ordered in k, 1 for a model that decodes
    each caption to its own image's features, chance-like with ties counted against the query for
    one that decodes every caption alike."""
    out = R.retrieval_metrics(model, data, n=1000)
    n = len(data.unimodal["test"]["image"][0])
    assert out["pairs"] == n and out["chance"]["recall@1"] == pytest.approx(1 / n)
    for side in ("caption_to_image", "image_to_caption"):
        r = out[side]
        assert 0 <= r["recall@1"] <= r["recall@5"] <= r["recall@10"] <= 1 and 1 <= r["median_rank"] <= n
    assert R.retrieval_metrics(model, data, n=1000) == out
    images, cap_img = data.unimodal["test"]["image"][0], data.caption_image["test"]
    own = {tuple(c.tolist()): images[cap_img[i]] for i, c in enumerate(data.unimodal["test"]["caption"][0])}
    monkeypatch.setattr(R, "caption_features", lambda m, ids: torch.stack([own[tuple(c.tolist())] for c in ids]))
    perfect = R.retrieval_metrics(model, data, n=6, seed=2)
    assert perfect["pairs"] == min(6, n)
    assert perfect["caption_to_image"]["recall@1"] == perfect["image_to_caption"]["recall@1"] == 1.0
    monkeypatch.setattr(R, "caption_features", lambda m, ids: torch.zeros(len(ids), images.shape[1]))
    same = R.retrieval_metrics(model, data, n=6, seed=2)
    assert same["image_to_caption"]["recall@1"] == 0.0 and same["image_to_caption"]["median_rank"] == min(6, n)
    with pytest.raises(ConfigError, match="n >= 2"):
        R.retrieval_metrics(model, data, n=1)
