"""AppTest: the Relatedness page's threshold slider, F1-optimal button, URL binding and PMI computing;
the Score page's uploads (good pair, wrong size, not an image)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dashboard import logic
from tests.dashboard_common import app, build_root, environ, metric_values, problems

pytest.importorskip("streamlit.testing.v1")
rel = pytest.importorskip("engine.relatedness")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    env = build_root(tmp_path_factory)
    with environ(env):
        yield env


def saved(root, name):
    d = Path(root["CMVAE_CHECKPOINTS"]) / name
    return logic.scores_labels(np.load(d / "pmi_related.npy"), np.load(d / "pmi_unrelated.npy"))


def test_two_models_side_by_side_with_f1_optimal_start(root):
    at = app("relatedness")
    assert problems(at) == [] and not at.error
    assert [s.key for s in at.slider] == ["thr_0", "thr_1"]
    assert [m.label for m in at.metric] == ["Precision", "Recall", "F1", "Accuracy"] * 2
    scores, labels = saved(root, "MMVAE")
    lo, hi, step = logic.threshold_range(scores)
    best, _ = rel.fit_threshold(scores, labels)
    assert at.slider(key="thr_0").value == pytest.approx(logic.snap(best, lo, hi, step))
    assert at.query_params["runs"] == "MMVAE,cI-MMVAE"


def test_moving_the_slider_updates_precision_recall_and_url(root):
    at = app("relatedness")
    scores, labels = saved(root, "MMVAE")
    before = metric_values(at)
    slider = at.slider(key="thr_0")
    target = float(np.quantile(scores, 0.9))
    slider.set_value(logic.snap(target, slider.min, slider.max, slider.step)).run()
    assert problems(at) == []
    after = {m.label: m.value for m in at.metric[:4]}
    t = at.slider(key="thr_0").value
    expected = rel.classification_report(scores, labels, t)
    assert after["Precision"] == logic.fmt_percent(expected["precision"])
    assert after["Recall"] == logic.fmt_percent(expected["recall"])
    assert (after["Precision"], after["Recall"]) != (before["Precision"], before["Recall"])
    assert float(at.query_params["t"].split(",")[0]) == pytest.approx(t, rel=1e-5)
    second_before = [m.value for m in app("relatedness").metric[4:]]
    assert [m.value for m in at.metric[4:]] == second_before      # the other model's panel is untouched


def test_f1_button_restores_the_optimal_threshold(root):
    at = app("relatedness")
    best = at.slider(key="thr_0").value
    slider = at.slider(key="thr_0")
    slider.set_value(slider.min).run()
    assert at.slider(key="thr_0").value != best
    at.button(key="best_0").click().run()
    assert at.slider(key="thr_0").value == pytest.approx(best)


def test_url_reproduces_the_view(root):
    scores, labels = saved(root, "cI-MMVAE")
    lo, hi, step = logic.threshold_range(scores)
    t = logic.snap(float(np.quantile(scores, 0.3)), lo, hi, step)
    at = app("relatedness", query={"runs": "cI-MMVAE", "t": f"{t}"})
    assert problems(at) == []
    assert len(at.slider) == 1 and at.slider(key="thr_0").value == pytest.approx(t)
    rep = rel.classification_report(scores, labels, t)
    assert metric_values(at)["Recall"] == logic.fmt_percent(rep["recall"])


def test_pmi_is_computed_when_no_arrays_are_saved(root):
    src = Path(root["CMVAE_CHECKPOINTS"]) / "MMVAE"
    dst = Path(root["CMVAE_RUNS"]) / "no-pmi"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("pmi_*.npy"))
    try:
        at = app("relatedness", query={"runs": "no-pmi"})
        assert not at.slider and at.form_submit_button
        at.number_input(key="npairs_0").set_value(50)
        at.number_input(key="K_0").set_value(2)
        at.form_submit_button[0].click().run()
        assert problems(at) == [] and not at.error
        assert at.slider(key="thr_0") is not None and len(at.metric) == 4
    finally:
        shutil.rmtree(dst)


def png(shape_hw, channels, size=None):
    a = np.random.default_rng(0).random((channels, *shape_hw)).astype(np.float32)
    return logic.image_bytes(a, size)


def test_score_page_scores_an_uploaded_pair(root):
    at = app("score")
    at.number_input(key="score_K").set_value(2)
    at.file_uploader(key="up_mnist").set_value(("digit.png", png((28, 28), 1), "image/png"))
    at.file_uploader(key="up_svhn").set_value(("crop.png", png((64, 64), 3), "image/png"))  # resized
    at.run()
    assert problems(at) == [] and not at.error
    vals = metric_values(at)
    assert np.isfinite(float(vals["PMI"])) and vals["Verdict"] in ("related", "unrelated")


@pytest.mark.parametrize("content,message", [(png((20, 100), 1), "expects 28×28"),
                                             (b"this is no image", "not a readable image")])
def test_score_page_rejects_bad_uploads(root, content, message):
    at = app("score")
    at.file_uploader(key="up_mnist").set_value(("bad.png", content, "image/png")).run()
    assert problems(at) == []
    assert any(message in e.value for e in at.error), [e.value for e in at.error]


def test_a_link_with_threshold_is_read_and_unknown_keys_are_named(root):
    scores, labels = saved(root, "cI-MMVAE")
    lo, hi, step = logic.threshold_range(scores)
    t = logic.snap(float(np.quantile(scores, 0.7)), lo, hi, step)
    at = app("relatedness", query={"runs": "cI-MMVAE", "threshold": f"{t}", "thr": "3"})
    assert problems(at) == []
    assert at.slider(key="thr_0").value == pytest.approx(t)
    assert float(at.query_params["t"]) == pytest.approx(t) and "threshold" not in at.query_params
    assert any("`?thr=`" in w.value and "t=" in w.value for w in at.warning), [w.value for w in at.warning]
    bad = app("relatedness", query={"runs": "cI-MMVAE", "t": "high"})
    assert any("Ignored the link's threshold `high`" in w.value for w in bad.warning)


def test_loading_status_is_cleared_once_the_panels_are_drawn(root):
    at = app("relatedness")
    assert problems(at) == [] and len(at.metric) == 8
    labels = [s.label for s in at.status]
    assert not any("Loading the PMI" in label for label in labels), labels
