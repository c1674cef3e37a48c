"""AppTest on an empty $CMVAE_CACHE: a page that needs data shows the build's progress, then its content."""
from __future__ import annotations

import pytest

from tests.dashboard_common import app, environ, problems

pytest.importorskip("streamlit.testing.v1")


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
    """A 3-step cI-MMVAE trained on a 20-bird default synthetic CUB; yields (env with an empty cache, calls)."""
    from dashboard import ui
    from engine.data import synth_birds
    from engine.registry import build_data
    from engine.train import train
    from tests.conftest import tiny_config

    base = tmp_path_factory.mktemp("cold")
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synth_birds, "N_IMAGES", 20)                 # the default set, shrunk: 5 species of 4
        mp.setattr(synth_birds, "IMAGE_SIZE", 64)
        report = ui.StatusProgress.__call__
        mp.setattr(ui.StatusProgress, "__call__", lambda self, d, t, w: calls.append((d, t, w)) or report(self, d, t, w))
        cfg = tiny_config("cI-MMVAE", "cub-synthetic")
        cfg.data.data_fraction = 1.0
        with environ({"CMVAE_CACHE": str(base / "training-cache")}):
            train(cfg, base / "checkpoints" / "cub-cI-MMVAE", progress=False, data=build_data(cfg.data, False))
        env = {"CMVAE_CHECKPOINTS": str(base / "checkpoints"), "CMVAE_RUNS": str(base / "runs"),
               "CMVAE_CACHE": str(base / "empty-cache")}
        with environ(env):
            yield env, calls


def test_retrieval_on_an_empty_cache_shows_progress_then_its_content(cold):
    from engine.data.synth_birds import DRAWING

    env, calls = cold
    at = app("retrieval")
    assert problems(at) == [] and not at.error, [e.value for e in at.error]
    stages = list(dict.fromkeys(w for *_, w in calls))
    assert stages[0] == DRAWING and "features" in stages[1] and len(stages) == 2
    for stage in stages:
        seen = [(d, t) for d, t, w in calls if w == stage]
        assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] > 0
    drawn = [t for d, t, w in calls if w == DRAWING][0]
    featurised = [t for d, t, w in calls if w == stages[1]][0]
    assert drawn == 20 and featurised == 4                     # only the test split's images: 1 species of 4
    box = at.status[0]
    assert box.state == "complete" and "data ready" in box.label
    assert [p.value for p in at.progress] == [100] and at.progress[0].text.startswith(stages[1])
    assert any(t.label == "Caption" for t in at.text_input)    # the page's content, after the status
    at.text_input(key="ret_caption").set_value("a small bird with a red breast")
    at.form_submit_button[0].click().run()
    assert problems(at) == [] and not at.error and len(at.dataframe[0].value) == 4
    assert len(at.status) == 0                                 # built once: reruns show no status


def test_generations_build_only_the_missing_train_features(cold):
    env, calls = cold
    app("retrieval")                                           # the test split is built (or was already)
    before = len(calls)
    at = app("generations")
    at.radio(key="gen_mode").set_value("caption_to_image")
    at.number_input(key="gen_n").set_value(2)
    at.form_submit_button[0].click().run()
    assert problems(at) == [] and not at.error, [e.value for e in at.error]
    new = calls[before:]
    assert {w for *_, w in new} and all("features" in w for *_, w in new) and new[-1][:2] == (16, 16)
    assert len(at.get("image")) == 2
