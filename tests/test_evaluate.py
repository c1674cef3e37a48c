"""evaluate / generate / reproduce on tiny trained runs (few steps, tiny sample counts)."""
import csv
import json
import math

import numpy as np
import pytest
import torch

import engine
from engine.config import DataConfig


@pytest.fixture(scope="module")
def classifiers():
    """The shipped offline classifiers when present; else one-epoch stand-ins on a slice of the train split."""
    from engine.data.mnist import load_mnist
    from engine.data.svhn import load_svhn
    from engine.metrics.classifiers import SHIPPED_DIR, get_classifiers, train_classifier

    if all((SHIPPED_DIR / f).is_file() for f in ("mnist-offline.pt", "svhn-offline.pt", "offline.json")):
        return get_classifiers(DataConfig(), "cpu", progress=False)
    clfs, info = [], {}
    for name, load in (("mnist", load_mnist), ("svhn", load_svhn)):
        (x, y), test = load("train"), load("test")
        clf, meta = train_classifier(name, (x[:512], y[:512]), test, torch.device("cpu"), epochs=1, progress=False)
        clfs.append(clf)
        info[name] = {"test_accuracy": meta["test_accuracy"], "seconds": meta["seconds"], "path": None}
    return clfs[0], clfs[1], info


SMALL = dict(samples=64, ll_samples=3, device="cpu", progress=False, test_pairs=40, ll_pairs=4, latent_max=300)


def _frac(v):
    return isinstance(v, float) and 0.0 <= v <= 1.0


@pytest.mark.parametrize("variant", ["cI-MMVAE", "MVAE"])
def test_evaluate_keys_types_ranges(tiny_run, classifiers, variant):
    from engine.evaluate import evaluate, read_evaluation

    run = tiny_run(variant)
    m = evaluate(run, classifiers=classifiers, **SMALL)
    assert read_evaluation(run) == json.loads(json.dumps(m))
    assert m["variant"] == variant and set(m["data_sources"]) == {"mnist", "svhn"}
    assert _frac(m["latent_accuracy"]["mnist"]) and _frac(m["latent_accuracy"]["svhn"])
    assert _frac(m["joint_coherence"])
    assert set(m["cross_coherence"]) == {"svhn_to_mnist", "mnist_to_svhn"}
    assert all(_frac(v) for v in m["cross_coherence"].values())
    assert set(m["synergy_coherence"]) == {"joint_to_mnist", "joint_to_svhn"}
    if variant == "cI-MMVAE":
        assert m["synergy_coherence"] == {"joint_to_mnist": None, "joint_to_svhn": None}
        assert "§4.3" in m["synergy_note"]
    else:
        assert all(_frac(v) for v in m["synergy_coherence"].values()) and m["synergy_note"] is None
    ll = m["log_likelihood"]
    assert set(ll) == {"joint", "mnist_given_joint", "mnist_given_mnist", "mnist_given_svhn",
                       "svhn_given_joint", "svhn_given_mnist", "svhn_given_svhn"}
    assert all(isinstance(v, float) and math.isfinite(v) and v < 0 for v in ll.values())
    assert len(m["diversity"]) == 10 and sum(m["diversity"]) == SMALL["samples"]
    assert all(sum(c) == SMALL["samples"] for c in m["diversity_by_modality"].values())
    assert all(_frac(v) for v in m["classifier_accuracy"].values())
    assert m["n"]["test_pairs"] == 40 and m["n"]["ll_pairs"] == 4 and m["n"]["latent"]["train"]["svhn"] == 300


def test_evaluate_cli_prints_json(tiny_run, classifiers, monkeypatch, capsys):
    import engine.evaluate
    from engine.cli import main

    monkeypatch.setattr(engine.evaluate, "get_classifiers", lambda *a, **k: classifiers)
    run = tiny_run("cI-MMVAE")
    rc = main(["evaluate", str(run), "--json", "--samples", "20", "--ll-samples", "0", "--test-pairs", "10",
               "--latent-max", "100", "--device", "cpu", "--no-progress"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["log_likelihood"] is None and printed["n"]["joint_samples"] == 20
    assert json.loads((run / "metrics.json").read_text()) == printed


def test_evaluating_a_checkpoint_file_writes_beside_it_and_names_its_step(tiny_run, classifiers):
    import torch

    from engine.evaluate import evaluate

    run = tiny_run("MMVAE")
    ck = run / "checkpoint.pt"
    step = torch.load(ck, weights_only=True, map_location="cpu")["step"]
    run_metrics = run / "metrics.json"
    before = run_metrics.read_text() if run_metrics.exists() else None
    m = evaluate(ck, classifiers=classifiers, **{**SMALL, "ll_samples": 0})
    assert json.loads((run / "checkpoint.metrics.json").read_text()) == json.loads(json.dumps(m))
    assert (run_metrics.read_text() if run_metrics.exists() else None) == before
    assert m["train"]["weights_step"] == step and m["train"]["steps"] is not None
    assert m["train"]["objective"] == engine.load(ck).config.objective.describe()


def test_evaluate_missing_run_is_a_clear_error(tmp_path, capsys):
    from engine.cli import main

    assert main(["evaluate", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_generations_shapes_and_determinism(tiny_run):
    import engine
    from engine.generate import generations, modes
    from engine.registry import build_data

    model = engine.load(tiny_run("cI-MMVAE"), "cpu")
    data = build_data(model.config.data)
    assert modes(("mnist", "svhn")) == ["joint", "mnist_to_svhn", "svhn_to_mnist", "reconstruct"]
    j = generations(model, data, "joint", 5, 0)
    assert set(j) == {"outputs_mnist", "outputs_svhn"}
    assert j["outputs_mnist"].shape == (5, 1, 28, 28) and j["outputs_svhn"].shape == (5, 3, 32, 32)
    c = generations(model, data, "mnist_to_svhn", 5, 1)
    assert c["inputs"].shape == (5, 1, 28, 28) and c["outputs"].shape == (5, 3, 32, 32) and c["labels"].shape == (5,)
    assert c["outputs"].min() >= 0 and c["outputs"].max() <= 1 and c["outputs"].dtype == np.float32
    again = generations(model, data, "mnist_to_svhn", 5, 1)
    assert all(np.array_equal(c[k], again[k]) for k in c)
    other = generations(model, data, "svhn_to_mnist", 5, 2)
    assert other["inputs"].shape == (5, 3, 32, 32) and other["outputs"].shape == (5, 1, 28, 28)
    # inputs really are the labelled test pairs
    r = generations(model, data, "reconstruct", 4, 1)
    assert set(r) == {"labels", "inputs_mnist", "outputs_mnist", "inputs_svhn", "outputs_svhn"}
    np.testing.assert_array_equal(r["inputs_mnist"], c["inputs"][:4])
    np.testing.assert_array_equal(r["labels"], c["labels"][:4])
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown mode"):
        generations(model, data, "svhn_to_svhn", 4, 0)


def test_generate_cli_png_and_npz(tiny_run, tmp_path):
    from PIL import Image

    from engine.cli import main

    run = tiny_run("cI-MMVAE")
    png, npz = tmp_path / "g.png", tmp_path / "g.npz"
    assert main(["generate", str(run), "--mode", "reconstruct", "--n", "6", "--out", str(png), "--device", "cpu"]) == 0
    w, h = Image.open(png).size
    assert (w, h) == (6 * 34 + 2, 4 * 34 + 2)       # 6 columns; rows: M in, M out, S in, S out
    assert main(["generate", str(run), "--mode", "joint", "--n", "3", "--out", str(npz), "--device", "cpu"]) == 0
    with np.load(npz) as z:
        assert z["outputs_mnist"].shape == (3, 1, 28, 28) and z["outputs_svhn"].shape == (3, 3, 32, 32)
    assert main(["generate", str(run), "--mode", "joint", "--out", str(tmp_path / "g.jpg")]) == 2


# The run settings of the tiny reproduce grids (a partial config, as engine.config.PRESETS holds).
TINY = {"objective.K": 2, "objective.N": 2, "data.dm": 2, "train.epochs": 1, "train.batch_size": 16}


def test_reproduce_tiny_grid_writes_tables_and_resumes(tmp_path, classifiers, monkeypatch):
    from engine import reproduce as R

    preset = R.Preset("tiny", "tests only", models=("cI-MMVAE",), fractions=(0.1,), seeds=(0,), gammas=(math.inf,),
                      ablation_fraction=0.1, settings=TINY | {"train.max_steps": 2},
                      eval={"samples": 32, "ll_samples": 0, "test_pairs": 20, "ll_pairs": 1, "latent_max": 100})
    out = tmp_path / "report"
    files = R.reproduce(preset, out, ablation=True, device="cpu", progress=False, classifiers=classifiers)
    for name in ("report.md", "table1.csv", "figure6.html", "ablation.csv", "figure11.html"):
        assert name in files and files[name].is_file(), name
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["cI-MMVAE-f0.1-s0", "cI-MMVAE-f0.1-s0-ginf"]
    rows = (out / "table1.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("0.1,cI-MMVAE,1,")
    report = (out / "report.md").read_text()
    assert "git commit" in report and "CPUs" in report and "| 10% | cI-MMVAE | 1 |" in report
    assert "| inf | 1 |" in report

    def refuse(*a, **k):
        raise AssertionError("a finished cell was retrained")

    monkeypatch.setattr(R, "train", refuse)
    again = R.reproduce(preset, out, ablation=True, device="cpu", progress=False, classifiers=classifiers)
    assert "0 cells run, 2 already done" in again["report.md"].read_text()


def test_reproduce_resumes_half_trained_run(tmp_path, classifiers):
    from engine import reproduce as R
    from engine.train import read_metrics, train

    preset = R.Preset("tiny", "tests only", models=("MMVAE",), fractions=(0.1,), seeds=(0,),
                      settings=TINY | {"train.max_steps": 4},
                      eval={"samples": 16, "ll_samples": 0, "test_pairs": 10, "ll_pairs": 1, "latent_max": 100})
    run = tmp_path / "runs" / "MMVAE-f0.1-s0"
    half = preset.run_config("MMVAE", 0.1, 0, preset.gamma, device="cpu")
    half.train.max_steps = 2
    train(half, run, progress=False)
    R.reproduce(preset, tmp_path, device="cpu", progress=False, classifiers=classifiers)
    assert read_metrics(run)[-1]["step"] == 4 and (run / "metrics.json").is_file()


def test_reproduce_workers_run_cells_in_parallel_and_report_failures(tmp_path, classifiers, monkeypatch):
    from engine import reproduce as R
    from engine.errors import ConfigError

    preset = R.Preset("tiny", "tests only", models=("MMVAE", "MVAE"), fractions=(0.1,), seeds=(0,),
                      settings=TINY | {"train.max_steps": 2},
                      eval={"samples": 16, "ll_samples": 0, "test_pairs": 10, "ll_pairs": 1, "latent_max": 100})
    files = R.reproduce(preset, tmp_path, device="cpu", progress=False, classifiers=classifiers, workers=2)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["MMVAE-f0.1-s0", "MVAE-f0.1-s0"]
    report = files["report.md"].read_text()
    assert "2 cells run, 0 already done" in report
    assert "| 10% | MMVAE | 1 |" in report and "| 10% | MVAE | 1 |" in report
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        R.reproduce(preset, tmp_path, progress=False, classifiers=classifiers, workers=0)

    # One cell that cannot train (a config the engine refuses) fails alone: the other is saved, and
    # the error names the failed cell.
    bad = R.Preset("tiny", "tests only", models=("MMVAE", "JMVAE"), fractions=(0.1,), seeds=(1,),
                   settings=preset.settings, eval=preset.eval)
    (tmp_path / "runs" / "JMVAE-f0.1-s1").mkdir(parents=True)
    (tmp_path / "runs" / "JMVAE-f0.1-s1" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=r"1 of 2 cells failed.*JMVAE-f0\.1-s1"):
        R.reproduce(bad, tmp_path, device="cpu", progress=False, classifiers=classifiers, workers=2)
    assert (tmp_path / "runs" / "MMVAE-f0.1-s1" / "metrics.json").is_file()


def _row(fraction, variant, s_to_m, m_to_s):
    from engine.reproduce import COLUMNS

    r = {"key": (fraction, variant), "n_seeds": 1, **{h: None for _, _, h in COLUMNS}}
    r["Cross S→M"], r["Cross M→S"] = (s_to_m, 0.0), (m_to_s, 0.0)
    return r


def test_findings_verdicts_on_a_hand_built_table():
    from engine.reproduce import findings

    # n = 2000 pairs: two standard errors of a 40-vs-50 % difference are 3.1 points, so 50 beats 40 and
    # 41 or 42 do not; 10-11 % is chance.
    rows = [_row(1.0, "MMVAE", 40, 10.5), _row(1.0, "cI-MMVAE", 50, 10.2), _row(1.0, "cC-MMVAE", 41, 11),
            _row(0.2, "MMVAE", 30, 10), _row(0.2, "cI-MMVAE", 42, 10), _row(0.2, "cC-MMVAE", 20, 10)]
    lines = findings(rows, 2000)
    got = {tuple(c.strip() for c in line.split("|")[1:4]): line.split("|")[-2].strip() for line in lines[2:]}
    assert got == {
        ("contrastive > baseline, 100% data", "MMVAE", "Cross S→M"): "holds for cI-MMVAE only",
        ("contrastive > baseline, 100% data", "MMVAE", "Cross M→S"): "not informative: all at chance",
        ("contrastive > baseline, 20% data", "MMVAE", "Cross S→M"): "holds for cI-MMVAE only",
        ("contrastive > baseline, 20% data", "MMVAE", "Cross M→S"): "not informative: all at chance",
        ("contrastive on 20% ≥ baseline on 100%", "MMVAE", "Cross S→M"): "holds for cI-MMVAE only",
        ("contrastive on 20% ≥ baseline on 100%", "MMVAE", "Cross M→S"): "not informative: all at chance"}
    worse = findings([_row(1.0, "MVAE", 60, 50), _row(1.0, "cI-MVAE", 30, 51), _row(1.0, "cC-MVAE", 20, 49)], 2000)
    assert worse[2].endswith("| does not hold (worse) |") and worse[3].endswith("| does not hold (within noise) |")
    # without a noise rule (the whole test set) any gain counts
    assert findings([_row(1.0, "JMVAE", 60, 50), _row(1.0, "cI-JMVAE", 60.5, 51)], None)[2].endswith("| holds |")


def test_diverged_runs_are_those_whose_held_out_iwae_exploded():
    from engine.reproduce import diverged

    curve = [{"test_iwae": v} for v in (-3457.0, -3349.7, -3393.0, -3657.7)]
    assert diverged(curve) is None                                     # a little worse than the best: fine
    assert diverged(curve + [{"test_iwae": -2.78e13}]) == (-3349.7, -2.78e13)
    assert diverged(curve + [{"test_iwae": float("nan")}]) is not None
    assert diverged(curve[:1]) is None and diverged([{"step": 3}]) is None
    assert diverged([{"test_iwae": float("nan")}, {"test_iwae": -1.0}]) is None


def test_tables_show_a_spread_only_over_several_seeds():
    from engine.reproduce import Cell, aggregate, csv_text, markdown_table

    m = lambda acc: {"latent_accuracy": {"mnist": acc, "svhn": acc}}   # noqa: E731
    rows = aggregate([(Cell("MMVAE", 1.0, 0, 2.0), m(0.5)), (Cell("MMVAE", 1.0, 1, 2.0), m(0.7)),
                      (Cell("MVAE", 1.0, 0, 2.0), m(0.4))], lambda c: (c.fraction, c.variant))
    md = markdown_table(rows, ["Data", "Methods"], lambda k: [f"{100 * k[0]:g}%", k[1]]).splitlines()
    assert "| 100% | MMVAE | 2 | 60.00 (±14.14) |" in md[2] and "| 100% | MVAE | 1 | 40.00 | 40.00 | — |" in md[3]
    csv_rows = csv_text(rows, ["fraction", "variant"]).splitlines()
    assert csv_rows[1].startswith("1,MMVAE,2,60.0,14.1421,") and csv_rows[2].startswith("1,MVAE,1,40.0,,40.0,,")


def test_table1_shows_the_papers_number_beside_ours(tmp_path):
    from engine import reproduce as R

    def m(m_to_s):
        return {"latent_accuracy": {"mnist": 0.5, "svhn": 0.25},
                "cross_coherence": {"svhn_to_mnist": 0.4, "mnist_to_svhn": m_to_s}}

    main = [(R.Cell("MMVAE", 1.0, 0, 2.0), m(0.67)), (R.Cell("MMVAE", 0.1, 0, 2.0), m(0.33))]
    report = R.write_report(tmp_path, R.PRESETS["cpu"](), main, [], 1.0, 0, 0, None)["report.md"].read_text()
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[4:-1]]
             for line in report.splitlines() if line.startswith("| 100% | MMVAE") or line.startswith("| 10% | MMVAE")}
    # 100% MMVAE: the paper's Table 1 (latent acc. 92.48 / 79.03, cross 70.77 / 85.50) beside ours; joint
    # coherence (ours not measured) is a dash with the paper's 42.32; synergy is not applicable for MMVAE
    assert lines["100%"] == ["50.00 (92.48)", "25.00 (79.03)", "— (42.32)", "40.00 (70.77)", "67.00 (85.50)",
                             "—", "—"]
    # 10% is not a fraction of the paper's table: ours alone
    assert lines["10%"] == ["50.00", "25.00", "—", "40.00", "33.00", "—", "—"]
    assert "the paper's number (its Table 1" in report
    # the CSV keeps its columns and adds the paper's after them; the figures read it back unchanged
    text = (tmp_path / "table1.csv").read_text()
    head, full, tenth = list(csv.reader(text.splitlines()))
    assert head[:17] == ["fraction", "variant", "n_seeds"] + [f"{h} {s}" for _, _, h in R.COLUMNS for s in ("mean", "std")]
    assert head[17:] == [f"{h} paper" for _, _, h in R.COLUMNS]
    assert full[:2] == ["1", "MMVAE"] and full[17:] == ["92.48", "79.03", "42.32", "70.77", "85.5", "", ""]
    assert tenth[:2] == ["0.1", "MMVAE"] and tenth[17:] == [""] * 7
    assert R.rows_from_csv(text, 2) == R.aggregate(main, lambda c: (c.fraction, c.variant))
    # the paper's row is looked up by value, whatever float the fraction was parsed to
    assert R.paper_row((0.2, "cC-JMVAE"))["Synergy joint→S"] == 68.49 and R.paper_row((0.5, "MMVAE")) == {}
    assert R.paper_row((math.inf,)) == {}
    # every Table 1 row of the paper is there; only the MMVAE variants' synergy coherence is missing ("—")
    from engine.registry import VARIANTS

    assert set(R.PAPER_TABLE1) == {(f, v) for f in (1.0, 0.2) for v in VARIANTS}
    assert all((v is None) == (h.startswith("Synergy") and key[1].endswith("MMVAE"))
               for key, row in R.PAPER_TABLE1.items() for h, v in row.items())


def test_report_lists_diverged_runs(tmp_path):
    from engine import reproduce as R

    preset = R.PRESETS["cpu"]()
    files = R.write_report(tmp_path, preset, [], [], 1.0, 0, 0, None, {"cI-JMVAE-f0.2-s0": (-3349.7, -2.78e13)})
    assert "Diverged runs" in files["report.md"].read_text() and "cI-JMVAE-f0.2-s0 (best -3,350, last -2.78e+13)" \
        in files["report.md"].read_text()
    assert "Diverged runs" not in R.write_report(tmp_path, preset, [], [], 1.0, 0, 0, None)["report.md"].read_text()


def test_report_header_sums_the_invocations(tmp_path):
    from engine import reproduce as R

    R.log_invocation(tmp_path, 100.0, 3, 0, 2)
    R.log_invocation(tmp_path, 2.0, 0, 3, 1)          # nothing ran: not counted
    R.log_invocation(tmp_path, 50.4, 1, 3, 2)
    lines = R._invocation_lines(R.read_invocations(tmp_path))
    assert lines[0].startswith("- wall time of the whole grid: 150 s over 2 invocation(s)") and len(lines) == 3


def test_presets_state_their_cuts():
    from engine.reproduce import PRESETS, grid

    cpu, paper = PRESETS["cpu"](), PRESETS["paper"]()
    main, abl = grid(cpu, ablation=True)
    assert len(main) == 9 * 2 * 1 and len(abl) == 6 * 1
    p = paper.config
    assert p.objective.K == 30 and p.objective.N == 5 and paper.gamma == 2 and p.train.batch_size == 128
    assert cpu.config.model.learn_prior and not p.model.learn_prior
    assert cpu.run_config("MVAE", 1.0, 0, cpu.gamma).model.learn_prior
    for word in ("K = 30 -> 2", "N = 5 -> 2", "3000 optimiser steps", "seeds 5 -> 1", "learnt prior"):
        assert word in " ".join(cpu.notes.split())


def test_cost_rank_puts_extra_negative_passes_first():
    from engine.reproduce import PRESETS, Cell, cost_rank

    cpu = PRESETS["cpu"]()
    rank = {v: cost_rank(Cell(v, 1.0, 0, 2.0), cpu) for v in ("MMVAE", "cI-MMVAE", "MVAE", "cC-MVAE", "cI-JMVAE")}
    assert rank == {"MMVAE": 1, "cI-MMVAE": 1, "MVAE": 1, "cC-MVAE": 3, "cI-JMVAE": 3}
    assert cost_rank(Cell("cI-MVAE", 1.0, 0, math.inf), cpu) == 1      # gamma = inf is the baseline objective


def test_report_figures_are_redrawn_from_their_csv_and_work_offline(tmp_path):
    from engine import reproduce as R

    rows = [{"key": (0.2, "MMVAE"), "n_seeds": 1, **{h: (40.0 + i, 0.0) for i, (_, _, h) in enumerate(R.COLUMNS[:5])},
             **{h: None for _, _, h in R.COLUMNS[5:]}},
            {"key": (1.0, "MMVAE"), "n_seeds": 2, **{h: (50.0 + i, 1.5) for i, (_, _, h) in enumerate(R.COLUMNS)}}]
    (tmp_path / "table1.csv").write_text(R.csv_text(rows, ["fraction", "variant"]))
    assert R.rows_from_csv((tmp_path / "table1.csv").read_text(), 2) == rows
    (tmp_path / "ablation.csv").write_text(R.csv_text([{**rows[1], "key": (math.inf,)}], ["gamma"]))
    files = R.redraw_figures(tmp_path, 1.0)
    assert {p.name for p in files} == {"figure6.html", "figure11.html", "plotly.min.js"}
    for name in ("figure6.html", "figure11.html"):
        html = (tmp_path / name).read_text()
        assert 'src="plotly.min.js"' in html and "cdn.plot.ly" not in html
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000          # one shared local copy
