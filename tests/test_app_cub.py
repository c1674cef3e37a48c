"""AppTest on a tiny synthetic-CUB run: CSV scoring (good, malformed, unknown ids) and retrieval."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch

from tests.dashboard_common import app, environ, problems

pytest.importorskip("streamlit.testing.v1")
N_IMAGES, SIZE = 48, 64


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    """A 3-step cI-MMVAE on a 48-image synthetic CUB, alone in a checkpoint root; returns (env, data)."""
    from engine.data import synth_birds
    from engine.registry import build_data
    from engine.train import train
    from tests.conftest import tiny_config

    def fake_features(images, model_name, batch_size=32, download=False, progress=True):
        """Deterministic stand-in for EfficientNet features (cached to disk like the real ones)."""
        rng = np.random.default_rng(len(images))
        return rng.random((len(images), 1280)).astype(np.float32)

    base = tmp_path_factory.mktemp("dash-cub")
    root = synth_birds.write_synthetic_cub(base / "cub", n_images=N_IMAGES, seed=0, image_size=SIZE)
    cfg = tiny_config("cI-MMVAE", "cub-synthetic")
    cfg.data.root, cfg.data.data_fraction = str(root), 1.0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("engine.data.features.extract_features", fake_features)
        data = build_data(cfg.data)
    train(cfg, base / "checkpoints" / "cub-cI-MMVAE", progress=False, data=data)
    env = {"CMVAE_CHECKPOINTS": str(base / "checkpoints"), "CMVAE_RUNS": str(base / "runs")}
    with environ(env):
        yield env, data


def upload(at, content: bytes, K: int = 2, go: bool = True):
    """Upload a CSV at ``K``; with ``go``, press the Score button the page offers after its estimate."""
    at.number_input(key="score_K").set_value(K)
    at.file_uploader(key="up_csv").set_value(("pairs.csv", content, "text/csv")).run()
    if go and any(b.key == "score_go" for b in at.button):
        at.button(key="score_go").click().run()
    return at


def pairs_csv(data, n: int) -> bytes:
    ids = (list(data.image_ids["test"]) * n)[:n]
    caps = (list(data.captions_text["test"]) * n)[:n]
    return pd.DataFrame({"caption": caps, "image_id": ids}).to_csv(index=False).encode()


def test_csv_pairs_get_pmi_and_verdicts(cub):
    _, data = cub
    ids = data.image_ids["test"][:2]
    caps = [data.captions_text["test"][0], "a zyzzyva bird"]
    csv = pd.DataFrame({"caption": caps, "image_id": ids}).to_csv(index=False)
    at = upload(app("score"), csv.encode())
    assert problems(at) == [] and not at.error, [e.value for e in at.error]
    df = at.dataframe[0].value
    assert df["image_id"].tolist() == ids and set(df["verdict"]) <= {"related", "unrelated"}
    assert df["unknown words"].tolist()[1] == "zyzzyva"


@pytest.mark.parametrize("content,message", [(b"caption;image\nfoo;1\n", "lacks column"), (b"", "empty"),
                                             (b"caption,image_id\nbird,999999\n", "not in this dataset")])
def test_bad_csv_is_an_error_not_a_crash(cub, content, message):
    at = upload(app("score"), content)
    assert problems(at) == []
    assert any(message in e.value for e in at.error), [e.value for e in at.error]


def test_csv_scoring_estimates_first_then_scores_in_pieces_like_one_call(cub, monkeypatch):
    from dashboard import logic
    from engine import load
    from engine.relatedness import score_pairs
    from dashboard.runs import find_runs

    _, data = cub
    monkeypatch.setattr(logic, "SCORE_CHUNK_WORK", 6)             # K=2: pieces of 3 pairs
    at = upload(app("score"), pairs_csv(data, 10), go=False)
    assert problems(at) == [] and not at.error
    assert any("10 pairs × K = 2: about" in i.value and "samples/s" in i.value for i in at.info)
    assert not at.dataframe                                        # nothing scored before the click
    at.button(key="score_go").click().run()
    assert problems(at) == [] and not at.error
    assert any("Scored 10 pairs" in s.value for s in at.success)
    shown = at.dataframe[0].value["PMI"].tolist()
    model = load(find_runs()[0].path, "cpu")
    row = {i: r for r, i in enumerate(data.image_ids["test"])}
    frame = pd.read_csv(io.BytesIO(pairs_csv(data, 10)))
    feats = data.unimodal["test"]["image"][0][[row[i] for i in frame["image_id"]]]
    caps = torch.stack([data.vocab.encode(t, warn=False)[0] for t in frame["caption"]])
    whole = score_pairs(model, feats, caps, K=2)
    assert shown == [logic.round_sig(v) for v in at.session_state["_score_job"]["pmi"]]
    assert np.allclose(at.session_state["_score_job"]["pmi"], whole, atol=1e-4)


def test_csv_scoring_cancelled_keeps_the_pairs_done(cub):
    _, data = cub
    at = upload(app("score"), pairs_csv(data, 6), go=False)
    at.button(key="score_go").click().run()
    job = at.session_state["_score_job"]
    job.update(pmi=job["pmi"][:2], cancelled=True)                 # as if Cancel was pressed after two pairs
    at.session_state["_score_job"] = job
    at.run()
    assert problems(at) == []
    assert any("Cancelled after 2 of 6 pairs" in w.value for w in at.warning)
    assert len(at.dataframe[0].value) == 2
    at.button(key="score_resume").click().run()
    assert problems(at) == [] and any("Scored 6 pairs" in s.value for s in at.success) and len(at.dataframe[0].value) == 6


def test_csv_work_above_the_cap_is_refused_with_what_to_do(cub):
    _, data = cub
    at = upload(app("score"), pairs_csv(data, 40), K=1000)
    assert problems(at) == [] and not at.dataframe and not any(b.key == "score_go" for b in at.button)
    assert any("40 pairs × K = 1,000 is 40,000 importance samples" in e.value and "lower K to 750" in e.value
               for e in at.error), [e.value for e in at.error]


def test_retrieval_caption_query_returns_k_results(cub):
    at = app("retrieval")
    assert problems(at) == []
    if not any(t.label == "Caption" for t in at.text_input):
        assert any("engine.retrieval" in i.value for i in at.info)
        pytest.skip("engine.retrieval is not there yet: the page says so")
    at.text_input(key="ret_caption").set_value("a small bird with a red breast")
    at.slider(key="ret_k").set_value(3)
    at.form_submit_button[0].click().run()
    assert problems(at) == [] and not at.error
    images = at.dataframe[0].value                      # first tab: caption -> images
    assert len(images) == 3 and list(images["rank"]) == [1, 2, 3]
    assert images["score"].is_monotonic_decreasing
    assert len(at.dataframe[1].value) == 5               # second tab: default k captions for an image


def test_retrieval_empty_caption_is_an_error(cub):
    at = app("retrieval")
    if not at.text_input:
        pytest.skip("engine.retrieval is not there yet")
    at.text_input(key="ret_caption").set_value("   ")
    at.form_submit_button[0].click().run()
    assert problems(at) == [] and any("empty" in e.value for e in at.error)


def generate(at, mode: str, n: int, decoding: str = "greedy"):
    at.radio(key="gen_mode").set_value(mode)
    at.number_input(key="gen_n").set_value(n)
    at.radio(key="gen_decoding").set_value(decoding)
    at.form_submit_button[0].click().run()
    return at


def shown_text(at) -> list[str]:
    """Markdown shown on the page with the markdown escapes undone (captions read as typed)."""
    import re

    return [re.sub(r"\\(.)", r"\1", m.value) for m in at.markdown]


@pytest.mark.parametrize("mode,headers", [
    ("image_to_caption", ["input image", "generated caption"]),
    ("caption_to_image", ["input caption", "generated image (nearest train image)"]),
    ("reconstruct", ["input image", "input caption", "generated image (nearest train image)", "generated caption"]),
    ("joint", ["generated image (nearest train image)", "generated caption"])])
def test_cub_generations_show_the_engines_captions_and_images(cub, mode, headers):
    from engine import load
    from engine.captions import cub_generations
    from dashboard.runs import find_runs

    _, data = cub
    at = generate(app("generations"), mode, 3)
    assert problems(at) == [] and not at.error, [e.value for e in at.error]
    text = shown_text(at)
    assert [t.strip("*") for t in text if t.startswith("**")] == headers
    expected = cub_generations(load(find_runs()[0].path, "cpu"), data, mode, n=3, seed=0, decoding="greedy")
    for key in ("input_captions", "output_captions"):
        for caption in expected.get(key, []):
            assert (caption or "*(empty caption)*") in text, (key, caption)
    n_images = 3 * sum(k in expected for k in ("input_image_paths", "output_image_paths"))
    assert len(at.get("image")) == n_images


def test_cub_sampled_captions_differ_from_greedy_ones(cub):
    at = generate(app("generations"), "image_to_caption", 4)
    greedy = shown_text(at)
    generate(at, "image_to_caption", 4, "sample")
    assert problems(at) == [] and not at.error
    assert shown_text(at) != greedy


def test_image_captions_come_with_what_evaluate_measured_of_them(cub):
    """Beside captions generated from images, the page says how often the model's image captions repeat
    words and how many colours they get right (metrics.json), so a demo does not oversell them."""
    import json

    from dashboard.runs import find_runs

    metrics = find_runs()[0].path / "metrics.json"
    metrics.write_text(json.dumps({"captions": {"repeated_token_rate": 0.25, "n": 500, "attribute_coherence":
                                                {"coherence": 0.5, "chance": 0.125, "mentions": 40}}}))
    try:
        at = generate(app("generations"), "image_to_caption", 2)
        notes = [c.value for c in at.caption if c.value.startswith("Measured on 500 test images")]
        assert notes and "25 % of the captions" in notes[0] and "50 % are true of the image (chance 12.5 %)" in notes[0]
        generate(at, "caption_to_image", 2)
        assert not [c.value for c in at.caption if c.value.startswith("Measured on")]
        metrics.write_text("{not json")
        at = generate(app("generations"), "image_to_caption", 2)
        assert not at.exception and any("is not valid JSON" in c.value for c in at.caption)
        assert "generated caption" in [t.strip("*") for t in shown_text(at)]
    finally:
        metrics.unlink()
