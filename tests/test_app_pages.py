"""AppTest: every dashboard page renders on a temp checkpoint root; models, generations, compare, train."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dashboard import logic
from tests.dashboard_common import PAGES, app, build_root, environ, problems

pytest.importorskip("streamlit.testing.v1")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    env = build_root(tmp_path_factory)
    with environ(env):
        yield env


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_without_exception(root, page):
    at = app(page)
    assert problems(at) == []
    assert at.title and at.title[0].value


def test_empty_roots_say_how_to_get_a_checkpoint(tmp_path):
    with environ({"CMVAE_CHECKPOINTS": str(tmp_path / "none"), "CMVAE_RUNS": str(tmp_path / "none2")}):
        for page in ("models", "relatedness", "score", "generations"):
            at = app(page)
            assert problems(at) == []
            assert any("python -m engine train" in i.value for i in at.info), page


def test_models_page_shows_config_curves_and_metrics(root):
    at = app("models")
    assert not at.error
    assert {m.label for m in at.metric} >= {"K", "N", "gamma"}
    assert len(at.dataframe) >= 1          # metrics.json table
    assert any("Loaded" in s.value for s in at.success)


def test_corrupt_checkpoint_is_an_error_not_a_crash(root):
    at = app("models")
    picker = at.multiselect(key="w_models")
    corrupt = next(o for o in picker.options if "corrupt" in o)
    picker.set_value([corrupt]).run()
    assert problems(at) == []
    assert any("Cannot load checkpoint corrupt" in e.value for e in at.error)


def test_missing_checkpoint_is_an_error(root, tmp_path):
    import shutil
    from pathlib import Path

    half = Path(root["CMVAE_RUNS"]) / "half-written"
    half.mkdir()
    shutil.copy(Path(root["CMVAE_CHECKPOINTS"]) / "MMVAE" / "config.json", half / "config.json")
    try:
        at = app("generations")
        at.selectbox(key="w_gen").set_value(next(o for o in at.selectbox(key="w_gen").options if "half" in o)).run()
        at.form_submit_button[0].click().run()
        assert problems(at) == []
        assert any("no checkpoint.pt" in e.value for e in at.error)
    finally:
        shutil.rmtree(half)


@pytest.mark.parametrize("mode,titles", [("joint", ["generated (mnist)", "generated (svhn)"]),
                                         ("svhn_to_mnist", ["input (svhn)", "generated (mnist)"])])
def test_generations_show_grids(root, mode, titles):
    pytest.importorskip("engine.generate")
    at = app("generations")
    at.radio(key="gen_mode").set_value(mode)
    at.number_input(key="gen_n").set_value(4)
    at.form_submit_button[0].click().run()
    assert problems(at) == [] and not at.error
    assert [m.value.strip("*") for m in at.markdown if m.value.startswith("**")][:2] == titles


def test_compare_page_tables_bars_and_propagation(root):
    at = app("compare")
    assert problems(at) == [] and not at.error
    table = at.dataframe[0].value
    raw = logic.metrics_table({r: json.loads((Path(root["CMVAE_CHECKPOINTS"]) / r / "metrics.json").read_text())
                               for r in ("MMVAE", "cI-MMVAE")})
    assert list(table.columns) == ["MMVAE", "cI-MMVAE"]
    assert table.loc["coherence.joint"].tolist() == ["10 %", "20 %"]          # rates as percentages
    assert table.loc["relatedness.auc"].tolist() == [logic.fmt_number(float(v)) for v in raw.loc["relatedness.auc"]]
    assert any(e.label == "propagation" for e in at.expander)
