"""The dashboard's pure helpers (no streamlit): grids, thresholds, curves, uploads, CSVs, jobs."""
from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd
import pytest

from dashboard import jobs, logic


def test_image_grid_tiles_in_order_with_padding():
    batch = np.zeros((5, 1, 4, 4), np.float32)
    batch[3] = 1.0                                   # 4th image white: row 1, col 0 with 3 columns
    g = logic.image_grid(batch, ncols=3, pad=1)
    assert g.shape == (2 * 5 + 1, 3 * 5 + 1, 3) and g.dtype == np.uint8
    assert (g[6:10, 1:5] == 255).all() and (g[1:5, 1:5] == 0).all()
    assert (g[0] == 255).all()                       # padding is white
    assert logic.image_grid(batch, ncols=3, pad=1, scale=2).shape == (22, 32, 3)


def test_to_hwc_accepts_channel_first_and_last_and_clips():
    a = np.full((2, 3, 8, 8), 2.0)
    assert logic.to_hwc(a).shape == (2, 8, 8, 3) and logic.to_hwc(a).max() == 1.0
    assert logic.to_hwc(np.zeros((2, 8, 8, 3))).shape == (2, 8, 8, 3)
    with pytest.raises(ValueError):
        logic.to_hwc(np.zeros((2, 8)))


def test_layout_rows_pairs_inputs_with_outputs():
    assert logic.layout_rows(["inputs_mnist", "outputs_mnist", "inputs_svhn", "outputs_svhn", ]) == [
        ["inputs_mnist", "outputs_mnist"], ["inputs_svhn", "outputs_svhn"]]
    assert logic.layout_rows(["outputs", "inputs"]) == [["inputs", "outputs"]]
    assert logic.layout_rows(["outputs_mnist", "outputs_svhn"]) == [["outputs_mnist", "outputs_svhn"]]
    assert logic.pretty_key("inputs", "svhn_to_mnist") == "input (svhn)"
    assert logic.pretty_key("outputs_svhn", "reconstruct") == "reconstruction (svhn)"


def test_threshold_range_covers_scores_on_a_round_grid():
    s = np.array([-3.3, 0.1, 7.9])
    lo, hi, step = logic.threshold_range(s, steps=100)
    assert lo <= s.min() and hi >= s.max() and step in (0.1, 0.2, 0.5)
    assert logic.snap(100, lo, hi, step) == hi and logic.snap(0.123, lo, hi, step) == pytest.approx(0.2)
    assert lo == pytest.approx(-3.4) and logic.snap(0.05, lo, hi, step) == pytest.approx(0.0)
    assert logic.threshold_range(np.array([2.0, 2.0]))[0] < 2.0 < logic.threshold_range(np.array([2.0, 2.0]))[1]


def test_parse_float_from_query_values():
    assert logic.parse_float("1.5") == 1.5 and logic.parse_float(["2"]) == 2.0
    assert logic.parse_float("nan") is None and logic.parse_float("abc") is None and logic.parse_float(None) is None


def test_scores_labels_and_operating_point():
    s, y = logic.scores_labels(np.array([3.0, 2.0, np.nan]), np.array([1.0, -1.0]))
    assert s.tolist() == [3.0, 2.0, 1.0, -1.0] and y.tolist() == [1, 1, 0, 0]
    p = logic.operating_point({"tp": 3, "fp": 1, "tn": 5, "fn": 1})
    assert p == {"fpr": 1 / 6, "tpr": 0.75, "recall": 0.75, "precision": 0.75}


def test_roc_pr_curves_are_thinned_but_keep_their_ends():
    rng = np.random.default_rng(0)
    s = np.concatenate([rng.normal(1, 1, 5000), rng.normal(-1, 1, 5000)])
    y = np.r_[np.ones(5000), np.zeros(5000)]
    c = logic.roc_pr_curves(s, y, max_points=300)
    assert len(c["fpr"]) <= 300 and c["fpr"][0] == 0 and c["fpr"][-1] == 1
    assert 0.9 < c["roc_auc"] < 0.95
    with pytest.raises(ValueError):
        logic.roc_pr_curves(s[:10], np.ones(10))


def test_prepare_image_converts_resizes_and_rejects():
    rgb = logic.image_bytes(np.random.default_rng(0).random((3, 56, 56)))
    a = logic.prepare_image(rgb, (1, 28, 28))
    assert a.shape == (1, 28, 28) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    grey = logic.image_bytes(np.full((1, 32, 32), 0.5))
    b = logic.prepare_image(grey, (3, 32, 32))
    assert b.shape == (3, 32, 32) and np.allclose(b, 128 / 255, atol=1 / 255)
    with pytest.raises(ValueError, match="expects 32×32"):
        logic.prepare_image(logic.image_bytes(np.zeros((3, 32, 90))), (3, 32, 32))
    with pytest.raises(ValueError, match="not a readable image"):
        logic.prepare_image(b"garbage", (1, 28, 28))


def test_parse_pairs_csv_good_and_malformed():
    df = logic.parse_pairs_csv(b"Caption,image_id\n a red bird ,12\nsmall bird,7\n")
    assert df["caption"].tolist() == ["a red bird", "small bird"] and df["image_id"].tolist() == [12, 7]
    for content, msg in ((b"", "empty"), (b"text,id\nx,1\n", "lacks column"), (b"caption,image_id\n", "no rows"),
                         (b"caption,image_id\nbird,abc\n", r"row\(s\) 2 have an image_id"), (b"caption,image_id\n,3\n", "empty caption"),
                         (b"caption,image_id\nbird,1.5\n", "not an integer")):
        with pytest.raises(ValueError, match=msg):
            logic.parse_pairs_csv(content)


def test_metrics_table_and_numeric_rows():
    t = logic.metrics_table({"a": {"x": {"y": 1.0}, "name": "n", "list": [1, 2]}, "b": {"x": {"y": 2}}})
    assert list(t.columns) == ["a", "b"] and t.loc["x.y"].tolist() == [1.0, 2.0]
    assert "list" not in t.index and logic.numeric_rows(t) == ["x.y"]
    assert logic.curve_frame([]).empty
    assert list(logic.curve_frame([{"step": 1, "loss": 2.0, "tag": "x"}]).columns) == ["step", "loss"]


def test_append_history_skips_repeated_steps():
    h = logic.append_history([], {"step": 1, "loss": 3.0})
    h = logic.append_history(h, {"step": 1, "loss": 3.0})
    h = logic.append_history(h, {})
    assert logic.append_history(h, {"step": 2, "loss": 1.0}) == [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 1.0}]


def _trained_config(argv: list[str]):
    """The RunConfig the trainer resolves from a train command line (its --config file and flags)."""
    from engine.cli import build_parser, config_from_args

    a = build_parser().parse_args(argv[3:])
    a.argv = argv[3:]
    return config_from_args(a)


def test_train_argv_trains_the_config_file_of_the_run(tmp_path):
    argv = jobs.train_argv("r", tmp_path)
    assert argv[1:4] == ["-m", "engine", "train"] and argv[argv.index("--out") + 1] == str(tmp_path / "r")
    assert argv[argv.index("--config") + 1] == str(tmp_path / "r" / "config.json")
    assert not {"--model", "--max-steps", "--K", "--negatives"} & set(argv)       # the settings are in the file
    cfg = jobs.train_config("cI-MMVAE", "mnist-svhn", 0.1, 2, 50, 4, 3, 2.0, 16)
    assert (cfg.variant, cfg.objective.K, cfg.objective.N, cfg.train.max_steps, cfg.data.data_fraction,
            cfg.train.epochs, cfg.train.batch_size, cfg.objective.looser) == ("cI-MMVAE", 4, 3, 50, 0.1, 2, 16, True)
    assert jobs.train_config("MMVAE", "mnist-svhn", 1.0, 1, None, 1, 1, 2.0, 8).train.max_steps is None
    (tmp_path / "r").mkdir()
    cfg.save(tmp_path / "r" / "config.json")
    from engine.config import flat

    assert flat(_trained_config(argv)) == flat(cfg)


def test_start_writes_the_config_before_the_trainer_starts(tmp_path):
    cfg = jobs.train_config("cI-MMVAE", "mnist-svhn", 0.1, 2, 50, 4, 3, 2.0, 16)
    probe = [sys.executable, "-c", "import json, sys; print('K', json.load(open(sys.argv[1]))['objective']['K'])",
             str(tmp_path / "r" / "config.json")]
    job = jobs.start("r", probe, tmp_path, config=cfg)
    deadline = time.time() + 30
    while jobs.is_alive(job.pid) and time.time() < deadline:
        time.sleep(0.05)
    assert jobs.log_tail(job) == "K 4"


@pytest.mark.parametrize("model,expected", [("cI-MMVAE", True), ("MMVAE", True), ("cC-MVAE", False), ("JMVAE", False)])
def test_train_config_asks_for_the_looser_bound_only_for_mmvae(model, expected):
    assert jobs.default_looser("mnist-svhn") and jobs.default_looser("cub-synthetic")
    assert jobs.train_config(model, "cub-synthetic", 1.0, 1, None, 2, 1, 2.0, 8, looser=True).objective.looser is expected
    assert not jobs.train_config(model, "cub-synthetic", 1.0, 1, None, 2, 1, 2.0, 8, looser=False).objective.looser
    tight = jobs.train_config(model, "mnist-svhn", 1.0, 1, None, 2, 1, 2.0, 8, looser=True, tight_after=50)
    assert tight.objective.tight_after == (50 if expected else None)
    assert jobs.train_config(model, "mnist-svhn", 1.0, 1, None, 2, 1, 2.0, 8, tight_after=0).objective.tight_after is None
    phased = jobs.train_config(model, "mnist-svhn", 1.0, 1, None, 2, 1, 2.0, 8, looser=True, tight_after=50,
                               tight_gamma=4.0, tight_K=10)
    assert phased.objective.tight_gamma == (4.0 if expected else None) and phased.objective.gamma == 2.0
    assert phased.objective.tight_K == (10 if expected else None) and phased.objective.K == 2
    assert jobs.train_config(model, "mnist-svhn", 1.0, 1, None, 2, 1, 2.0, 8, tight_gamma=4.0).objective.tight_gamma is None
    assert jobs.train_config(model, "mnist-svhn", 1.0, 1, None, 2, 1, 2.0, 8, tight_K=10).objective.tight_K is None


@pytest.mark.parametrize("dataset,source,expected", [("cub", "offline", ("offline", "/data/cub")),
                                                     ("mnist-svhn", "real", ("real", "/data/cub")),
                                                     ("cub-synthetic", "offline", ("offline", None)),
                                                     ("mnist-svhn", "offline", ("offline", None))])
def test_train_config_keeps_the_data_root_only_where_it_is_read(dataset, source, expected):
    cfg = jobs.train_config("MMVAE", dataset, 1.0, 1, None, 1, 1, 2.0, 8, source=source, data_root="/data/cub")
    assert (cfg.data.source, cfg.data.root) == expected and cfg.data.dataset == dataset
    assert cfg.model.latent_dim == (20 if dataset == "mnist-svhn" else 64)        # the dataset's defaults
    assert jobs.needs_data_root(dataset, source) == (expected[1] is not None)


def test_train_config_refuses_what_the_schema_refuses():
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="batch_size must be >= 2"):
        jobs.train_config("cI-MMVAE", "mnist-svhn", 0.1, 1, None, 2, 1, 2.0, 1)
    with pytest.raises(ConfigError, match="trains the tight bound from the start"):
        jobs.train_config("cI-MMVAE", "mnist-svhn", 0.1, 1, None, 2, 1, 2.0, 8, looser=False, tight_after=10)


def test_jobs_one_at_a_time_cancel_and_stale_records(tmp_path):
    sleep = [sys.executable, "-c", "import time; time.sleep(30)"]
    job = jobs.start("a", sleep, tmp_path)
    try:
        assert jobs.active(tmp_path).pid == job.pid and jobs.status(job) == "running"
        with pytest.raises(jobs.JobError, match="still running"):
            jobs.start("b", sleep, tmp_path)
        assert not (tmp_path / "b").exists()
    finally:
        assert jobs.cancel(tmp_path, wait=2).pid == job.pid
    assert jobs.active(tmp_path) is None and jobs.status(job) == "stopped"
    quick = jobs.start("c", [sys.executable, "-c", "print('hi')"], tmp_path)
    deadline = time.time() + 30
    while jobs.is_alive(quick.pid) and time.time() < deadline:
        time.sleep(0.05)
    assert jobs.active(tmp_path) is None and "hi" in jobs.log_tail(quick)
    with pytest.raises(jobs.JobError, match="already exists"):
        jobs.start("c", sleep, tmp_path)
    with pytest.raises(jobs.JobError, match="not allowed"):
        jobs.check_name("../evil", tmp_path)
    (tmp_path / jobs.ACTIVE_NAME).write_text("{broken")
    assert jobs.active(tmp_path) is None


def test_runs_finder_reads_configs_and_flags_problems(tmp_path, monkeypatch):
    from dashboard import runs

    ck = tmp_path / "ck"
    (ck / "good").mkdir(parents=True)
    (ck / "good" / "config.json").write_text('{"variant": "cI-MMVAE", "data": {"dataset": "mnist-svhn"}}')
    (ck / "good" / "checkpoint.pt").write_bytes(b"x")
    (ck / "broken").mkdir()
    (ck / "broken" / "config.json").write_text("{nope")
    (ck / ".hidden").mkdir()
    (ck / "unrelated-folder").mkdir()
    monkeypatch.setenv("CMVAE_CHECKPOINTS", str(ck))
    monkeypatch.setenv("CMVAE_RUNS", str(tmp_path / "missing"))
    found = {r.name: r for r in runs.find_runs()}
    assert set(found) == {"good", "broken"}
    assert found["good"].variant == "cI-MMVAE" and found["good"].problem == "" and found["good"].mtime > 0
    assert "unreadable" in found["broken"].problem
    assert [r.name for r in runs.find_runs(dataset="cub")] == []
    assert runs.datasets(list(found.values())) == ["mnist-svhn", "?"]


def test_alignment_summary_reads_collapse_and_alignment():
    from dashboard.logic import alignment_summary

    assert alignment_summary(None) == [] and alignment_summary({"distance_ratio": None}) == []
    rows = alignment_summary({"distance_ratio": 0.9021, "cross_decode_spread": {
        "mnist_to_svhn": {"ratio": 0.0683}, "svhn_to_mnist": {"ratio": 0.848}}})
    assert [r[1] for r in rows] == ["0.902", "0.0683", "0.848"]
    assert "unaligned" in rows[0][2] and "ignores mnist" in rows[1][2] and "vary" in rows[2][2]
    assert "aligned: the experts agree" in alignment_summary({"distance_ratio": 0.3})[0][2]


def test_progress_text_gives_counts_rate_and_time_left_to_three_figures():
    assert logic.progress_text(300, 600, "features", elapsed=14.0, done_here=300) == \
        "features: 300 / 600 · 21.4/s · 14 s left"
    assert logic.progress_text(10, 3000, "birds", elapsed=0.1, done_here=1) == "birds: 10 / 3,000 · 10/s · 4.98 min left"
    assert logic.progress_text(0, 600, "features", elapsed=0.0, done_here=0) == "features: 0 / 600"
    assert logic.progress_text(600, 600, "features", elapsed=28.0, done_here=600) == "features: 600 / 600"
    assert logic.duration_text(42.456) == "42.5 s" and logic.duration_text(129) == "2.15 min"


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width × height grey pixels (its pixel data is never decoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [20000, 10000])
def test_a_decompression_bomb_is_a_clear_error_and_never_decoded(side):
    with pytest.raises(ValueError, match=f"too large|{side}×{side} pixels; expected 28×28"):
        logic.prepare_image(bomb_png(side, side), (1, 28, 28))


def test_an_image_id_too_large_for_an_integer_is_reported_as_typed():
    with pytest.raises(ValueError, match=r"row\(s\) 3 \(99999999999999999999999\) have an image_id outside"):
        logic.parse_pairs_csv(b"caption,image_id\nbird,12\nbird,99999999999999999999999\n")
    with pytest.raises(ValueError, match=r"row\(s\) 2 \(-4\)"):
        logic.parse_pairs_csv(b"caption,image_id\nbird,-4\n")
    assert logic.parse_pairs_csv(b"caption,image_id\nbird,12.0\n")["image_id"].tolist() == [12]


def test_numbers_are_formatted_for_people():
    assert logic.fmt_metric("cross_coherence.svhn_to_mnist", 0.972000002861023) == "97.2 %"
    assert logic.fmt_metric("retrieval.caption_to_image.recall@5", 0.028333334252238274) == "2.83 %"
    assert logic.fmt_metric("cca_coherence.joint", 0.0031935397639758145) == "0.00319"     # a correlation
    assert logic.fmt_metric("log_likelihood.joint", -1234.5678) == "-1,230"
    assert logic.fmt_metric("train.steps", 7500) == "7,500" and logic.fmt_metric("x", None) == "—"
    assert logic.round_sig(0.972000002861023) == 0.972 and logic.round_sig(-0.0123456) == -0.0123
    t = logic.format_table(logic.metrics_table({"a": {"coherence": {"joint": 0.5}, "seconds": 12.3456}}))
    assert t.loc["coherence.joint", "a"] == "50 %" and t.loc["seconds", "a"] == "12.3"
    df = logic.round_frame(pd.DataFrame({"PMI": [1.23456, -0.000123456], "id": [1, 2]}))
    assert df["PMI"].tolist() == [1.23, -0.000123] and df["id"].tolist() == [1, 2]


def test_score_cap_and_pieces():
    assert logic.score_cap_error(1000, 30) is None
    msg = logic.score_cap_error(5000, 30)
    assert "150,000 importance samples" in msg and "lower K to 6" in msg and "at most 1,000 rows" in msg
    bounds = logic.chunk_bounds(50, 30, work=600)
    assert bounds[0] == (0, 20) and bounds[-1] == (40, 50) and logic.chunk_bounds(3, 1000, work=600) == [(0, 1), (1, 2), (2, 3)]


def test_caption_quality_note_says_what_evaluate_measured_of_image_captions():
    m = {"captions": {"repeated_token_rate": 1.0, "n": 500,
                      "attribute_coherence": {"coherence": 0.2, "chance": 0.25, "mentions": 5}}}
    assert logic.caption_quality_note(m) == ("Measured on 500 test images: 100 % of the captions this model "
                                             "generates from images repeat a word back to back; of their 5 colour "
                                             "mentions, 20 % are true of the image (chance 25 %).")
    m["captions"]["attribute_coherence"] = {"coherence": None, "chance": None, "mentions": 0}
    assert logic.caption_quality_note(m).endswith("repeat a word back to back.")
    assert logic.caption_quality_note({"cca_coherence": {}}) is None and logic.caption_quality_note(None) is None
