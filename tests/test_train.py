"""Trainer, checkpoints and CLI: files written, exact resume, clear errors on bad input."""
import json
import math

import pytest
import torch

import engine
from engine.checkpoints import read_checkpoint
from engine.cli import main
from engine.errors import CheckpointError, ConfigError, TrainingError
from engine.train import read_metrics, train
from tests.conftest import tiny_config


def test_run_directory_holds_config_checkpoint_and_metrics(tiny_run):
    run = tiny_run("cI-MMVAE")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["variant"] == "cI-MMVAE" and cfg["objective"]["contrastive"] == "iwae"
    lines = read_metrics(run)
    assert lines and {"term1", "term2", "loss", "elbo", "test_iwae", "seconds"} <= set(lines[-1])
    assert lines[-1]["step"] == 3
    ck = read_checkpoint(run)
    assert ck["step"] == 3 and "optimizer" in ck and "torch_rng" in ck


def test_load_rebuilds_from_checkpoint_alone(tiny_run, tmp_path):
    run = tiny_run("cI-MMVAE")
    only = tmp_path / "copy.pt"
    only.write_bytes((run / "checkpoint.pt").read_bytes())
    model = engine.load(only, device="cpu")
    assert model.config.variant == "cI-MMVAE" and not model.training
    state = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_resume_continues_exactly(tmp_path):
    straight = tmp_path / "straight"
    train(tiny_config(max_steps=4), straight, progress=False)
    split = tmp_path / "split"
    train(tiny_config(max_steps=2), split, progress=False)
    train(tiny_config(max_steps=4), split, resume=True, progress=False)
    a = torch.load(straight / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(split / "checkpoint.pt", weights_only=True)["model"]
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_refuses_to_overwrite_without_resume(tiny_run):
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny_config(), tiny_run("cI-MMVAE"), progress=False)


def test_truncated_checkpoint_is_a_clear_error(tiny_run, tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes((tiny_run("cI-MMVAE") / "checkpoint.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        engine.load(bad)


def test_other_format_version_is_a_clear_error(tiny_run, tmp_path):
    ck = torch.load(tiny_run("cI-MMVAE") / "checkpoint.pt", weights_only=True)
    ck["format_version"] = 99
    torch.save(ck, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="format version 99"):
        engine.load(tmp_path)


def test_mismatched_state_is_a_clear_error(tiny_run, tmp_path):
    ck = torch.load(tiny_run("cI-MMVAE") / "checkpoint.pt", weights_only=True)
    ck["config"]["model"]["latent_dim"] = 7
    torch.save(ck, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        engine.load(tmp_path)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        engine.load(tmp_path / "nowhere")


def test_nonfinite_losses_stop_training_with_a_message(tmp_path, monkeypatch):
    import engine.train as T

    real = T.variant_loss

    def broken(*a, **k):
        out = real(*a, **k)
        out.loss = out.loss * math.nan
        return out

    monkeypatch.setattr(T, "variant_loss", broken)
    with pytest.raises(TrainingError, match="non-finite losses in a row"):
        train(tiny_config(max_nonfinite=2), tmp_path / "nan", progress=False)


def test_cli_rejects_invalid_values_naming_choices(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--model", "VAE"])
    assert "cI-MMVAE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data-fraction", "1.5"])
    assert "(0, 1]" in capsys.readouterr().err


def test_cli_trains_and_reports(tmp_path, capsys):
    rc = main(["train", "--model", "ci-mvae", "--max-steps", "2", "--batch-size", "8", "--K", "2",
               "--negatives", "2", "--dm", "1", "--data-fraction", "0.05", "--device", "cpu",
               "--out", str(tmp_path / "r"), "--no-progress"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["step"] == 2
    assert json.loads((tmp_path / "r" / "config.json").read_text())["variant"] == "cI-MVAE"


def test_cli_reports_engine_errors_without_traceback(tmp_path, capsys):
    rc = main(["train", "--source", "real", "--data-root", str(tmp_path / "missing"), "--out", str(tmp_path / "r"),
               "--no-progress"])
    assert rc == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err


def test_export_is_small_loadable_and_not_resumable(tiny_run, tmp_path):
    from engine.checkpoints import export_checkpoint

    run = tiny_run("cI-MMVAE")
    path = export_checkpoint(run, tmp_path / "shipped")
    assert path.stat().st_size < (run / "checkpoint.pt").stat().st_size / 3
    assert (tmp_path / "shipped" / "config.json").exists() and (tmp_path / "shipped" / "metrics.jsonl").exists()
    model = engine.load(tmp_path / "shipped", device="cpu")
    full = engine.load(run, device="cpu")
    for (k, a), b in zip(model.state_dict().items(), full.state_dict().values()):
        assert a.dtype == b.dtype and torch.allclose(a, b, atol=1e-2, rtol=1e-2), k
    with pytest.raises(ConfigError, match="inference-only"):
        train(tiny_config(), tmp_path / "shipped", resume=True, progress=False)


def test_looser_bound_is_refused_where_it_does_not_apply(tmp_path):
    """--looser is for MMVAE's mixture posterior (refused before training elsewhere); with DReG it
    trains (Shi et al. 2019's m_dreg_looser)."""
    cfg = tiny_config("MVAE")
    cfg.objective.looser = True
    with pytest.raises(ConfigError, match="MMVAE's mixture posterior only"):
        train(cfg, tmp_path / "mvae", progress=False)
    assert not (tmp_path / "mvae").exists()
    cfg = tiny_config("MMVAE", max_steps=2)
    cfg.objective.looser = cfg.objective.dreg = True
    train(cfg, tmp_path / "dreg-looser", progress=False)
    assert (tmp_path / "dreg-looser" / "checkpoint.pt").is_file()


def test_tight_after_trains_the_looser_bound_then_the_tight_one(tmp_path, monkeypatch):
    """--tight-after k: steps 0..k-1 train the looser bound, steps k.. the tight one, with gamma replaced
    by --tight-gamma and K by --tight-K there; all need what they switch from, and may be set when resuming."""
    import engine.train as T

    real, seen = T.variant_loss, []

    def recording(model, xs, obj, *a, **k):
        seen.append((obj.looser, obj.gamma, obj.K))
        return real(model, xs, obj, *a, **k)

    monkeypatch.setattr(T, "variant_loss", recording)
    cfg = tiny_config("cI-MMVAE", max_steps=2)
    cfg.objective.looser = True
    train(cfg, tmp_path / "run", progress=False)
    cfg.objective.tight_after, cfg.objective.tight_gamma, cfg.objective.tight_K, cfg.train.max_steps = 3, 4.0, 3, 5
    train(cfg, tmp_path / "run", resume=True, progress=False)
    assert seen == [(True, 2.0, 2)] * 3 + [(False, 4.0, 3)] * 2
    objective = read_checkpoint(tmp_path / "run")["config"]["objective"]
    assert (objective["tight_after"], objective["gamma"], objective["tight_gamma"]) == (3, 2.0, 4.0)
    assert (objective["K"], objective["tight_K"]) == (2, 3)
    cfg.objective.tight_after = None
    with pytest.raises(ConfigError, match="tight_gamma=4.0 is a setting of the tight phase"):
        cfg.validate()
    cfg.objective.tight_gamma = None
    with pytest.raises(ConfigError, match="tight_K=3 is a setting of the tight phase"):
        cfg.validate()
    cfg.objective.tight_after, cfg.objective.looser = 3, False
    with pytest.raises(ConfigError, match="trains the tight bound from the start"):
        cfg.validate()


# --- checkpoints during training, interrupts, divergence, bad input (issue #15) ---------------------------

TINY_FLAGS = ["--model", "cI-MMVAE", "--data-fraction", "0.1", "--dm", "2", "--K", "2", "--negatives", "2",
              "--batch-size", "16", "--epochs", "1", "--device", "cpu", "--no-progress"]
# `python -m engine train` that also prints each finished step (so the test knows what a kill loses).
STEP_PRINTING = ("import sys, engine.cli as cli; real = cli.train; "
                 "cli.train = lambda *a, **k: real(*a, on_step=lambda d: print(d['step'], flush=True), **k); "
                 "sys.exit(cli.main(sys.argv[1:]))")


def _engine(args, **kw):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", STEP_PRINTING, "train", *args], cwd=Path(__file__).parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)


def _run_until(proc, step: int) -> int:
    """Read the printed steps until ``step``; the last one read."""
    last = 0
    while last < step:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        last = int(line)
    return last


def test_kill_9_loses_at_most_one_interval_and_sigterm_saves(tmp_path):
    """kill -9 at a random step, then SIGTERM (what the dashboard's Cancel sends), then resume to the end."""
    import random
    import signal

    rng, every, out = random.Random(15), 4, tmp_path / "run"
    args = TINY_FLAGS + ["--max-steps", "20", "--checkpoint-every", str(every), "--out", str(out)]
    proc = _engine(args)
    last = _run_until(proc, rng.randint(every + 1, 10))
    proc.kill()
    proc.wait()
    assert last - read_checkpoint(out / "checkpoint.pt")["step"] <= every
    (out / ".checkpoint.pt.orphan.tmp").write_bytes(b"x" * 1000)      # as a kill during a save leaves
    proc = _engine(args + ["--resume"])
    last = _run_until(proc, rng.randint(read_checkpoint(out / "checkpoint.pt")["step"] + 1, 16))
    assert not (out / ".checkpoint.pt.orphan.tmp").exists()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in err, err
    assert read_checkpoint(out / "checkpoint.pt")["step"] >= last
    proc = _engine(args + ["--resume"])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    steps = [line["step"] for line in read_metrics(out)]
    assert steps == sorted(set(steps)) and steps[-1] == 20
    assert read_checkpoint(out / "checkpoint.pt")["step"] == 20 and (out / "best.pt").exists()


def test_sigint_mid_epoch_saves_and_resume_is_exact(tmp_path):
    """SIGINT at step 5 (checkpoints every 3) saves step 5 mid-epoch; resuming matches a straight run."""
    import os
    import signal

    from engine.errors import Interrupted

    train(tiny_config(max_steps=8, checkpoint_every=3), tmp_path / "straight", progress=False)

    def interrupt(d):
        if d["step"] == 5:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted, match="stopped by SIGINT at step 5"):
        train(tiny_config(max_steps=8, checkpoint_every=3), tmp_path / "split", progress=False, on_step=interrupt)
    ck = read_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert ck["step"] == 5 and ck["batch_in_epoch"] == 5
    train(tiny_config(max_steps=8, checkpoint_every=3), tmp_path / "split", resume=True, progress=False)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["model"]
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert [m["step"] for m in read_metrics(tmp_path / "split")] == [3, 8]     # a signal's save is not evaluated


def test_interrupt_before_any_checkpoint_says_so(tmp_path, capsys, monkeypatch):
    import engine.train as T

    def interrupted(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "build_data", interrupted)
    assert main(["train", *TINY_FLAGS, "--out", str(tmp_path / "r")]) == 130
    err = capsys.readouterr().err
    assert "no checkpoint was written" in err and "kept" not in err


def test_resume_without_checkpoint_is_an_error_unless_allow_fresh(tmp_path, capsys):
    assert main(["train", *TINY_FLAGS, "--resume", "--out", str(tmp_path / "r")]) == 2
    assert "holds no checkpoint.pt" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert main(["train", *TINY_FLAGS, "--max-steps", "1", "--resume", "--allow-fresh",
                 "--out", str(tmp_path / "r")]) == 0
    assert read_checkpoint(tmp_path / "r" / "checkpoint.pt")["step"] == 1


def test_resume_refuses_conflicting_flags_and_applies_safe_ones(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "r"
    shutil.copytree(tiny_run("cI-MMVAE"), run)
    before = (run / "checkpoint.pt").read_bytes()
    assert main(["train", "--resume", "--out", str(run), "--model", "MMVAE", "--K", "9", "--lr", "0.5",
                 "--gamma", "7", "--max-steps", "9", "--no-progress"]) == 2
    err = capsys.readouterr().err
    for conflict in ("--model MMVAE (the run has cI-MMVAE)", "--K 9 (the run has 2)", "--lr 0.5 (the run has 0.001)",
                     "--gamma 7.0 (the run has 2.0)"):
        assert conflict in err
    assert "--max-steps" not in err and (run / "checkpoint.pt").read_bytes() == before
    assert main(["train", "--resume", "--out", str(run), "--max-steps", "4", "--device", "cpu", "--no-progress"]) == 0
    assert "applied --max-steps 4 (was 3)" in capsys.readouterr().err
    ck = read_checkpoint(run / "checkpoint.pt")
    assert ck["step"] == 4 and ck["config"]["objective"]["K"] == 2


def test_resume_with_a_changed_preset_applies_it_or_names_the_conflict(tmp_path, capsys, monkeypatch):
    """checkpoints/make.sh continues its runs with --preset: a preset that now trains longer (or switches
    to the tight bound) continues the run; one that changes a setting a run cannot change is refused."""
    import engine.config as C

    run = tmp_path / "r"
    monkeypatch.setitem(C.PRESETS, "tiny-test", {"train.max_steps": 1})
    assert main(["train", *TINY_FLAGS, "--preset", "tiny-test", "--out", str(run)]) == 0
    monkeypatch.setitem(C.PRESETS, "tiny-test", {"train.max_steps": 2, "objective.tight_after": 1})
    assert main(["train", *TINY_FLAGS, "--preset", "tiny-test", "--resume", "--out", str(run)]) == 0
    ck = read_checkpoint(run)
    assert ck["step"] == 2 and ck["config"]["objective"]["tight_after"] == 1
    curve = (run / "metrics.jsonl").read_text()
    monkeypatch.setitem(C.PRESETS, "tiny-test", {"train.max_steps": 2, "objective.tight_after": 1,
                                                 "objective.tight_gamma": 4.0})
    assert main(["train", *TINY_FLAGS, "--preset", "tiny-test", "--resume", "--out", str(run)]) == 0
    ck = read_checkpoint(run / "checkpoint.pt")    # nothing left to train: the setting is saved all the same
    assert ck["step"] == 2 and ck["config"]["objective"]["tight_gamma"] == 4.0
    assert json.loads((run / "config.json").read_text())["objective"]["tight_gamma"] == 4.0
    assert (run / "metrics.jsonl").read_text() == curve
    monkeypatch.setitem(C.PRESETS, "tiny-test", {"train.max_steps": 3, "train.lr": 0.5})
    capsys.readouterr()
    assert main(["train", *TINY_FLAGS, "--preset", "tiny-test", "--resume", "--out", str(run)]) == 2
    assert "--preset tiny-test (train.lr) 0.5 (the run has 0.001)" in capsys.readouterr().err
    assert read_checkpoint(run)["step"] == 2


def test_resume_cleans_temp_files_and_cuts_metrics_to_the_checkpoint(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "r"
    shutil.copytree(tiny_run("cI-MMVAE"), run)
    (run / ".checkpoint.pt.abc123.tmp").write_bytes(b"\0" * 4096)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 0, "step": 99, "loss": 1.0}) + "\n" + '{"epoch": 0, "st')
    train(tiny_config(max_steps=4), run, resume=True, progress=False)
    assert not list(run.glob(".*.tmp"))
    assert [m["step"] for m in read_metrics(run)] == [3, 4]


def test_divergence_stops_and_keeps_best(tmp_path, monkeypatch):
    """Weights that blow up after step 4 (finite loss) stop the run; best.pt and checkpoint.pt stay good."""
    import engine.train as T
    from engine.errors import Diverged

    real, calls = T.variant_loss, [0]

    def exploding(model, *a, **k):
        calls[0] += 1
        if calls[0] == 5:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(3 * torch.randn_like(p))
        return real(model, *a, **k)

    monkeypatch.setattr(T, "variant_loss", exploding)
    run = tmp_path / "r"
    with pytest.raises(Diverged, match="best.pt") as e:
        train(tiny_config(max_steps=8, checkpoint_every=2), run, progress=False)
    assert "far below the best" in str(e.value) or "NaN or inf" in str(e.value)
    best, last = read_checkpoint(run / "best.pt"), read_checkpoint(run / "checkpoint.pt")
    assert best["step"] <= 4 and last["step"] <= 4
    assert engine.load(run).source_path.name == "best.pt"


def test_huge_lr_fails_clearly_instead_of_finishing(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", *TINY_FLAGS, "--lr", "100", "--max-steps", "10", "--checkpoint-every", "5",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "diverging" in err and "--lr" in err
    assert not (out / "checkpoint.pt").exists() and not (out / "best.pt").exists()


def test_nonfinite_weights_are_never_saved(tmp_path, monkeypatch):
    import engine.train as T
    from engine.errors import Diverged

    real, calls = T.variant_loss, [0]

    def poisoned(model, *a, **k):
        calls[0] += 1
        out = real(model, *a, **k)
        if calls[0] == 3:
            out.loss = out.loss + 0.0 * next(model.parameters()).sum() * math.inf
        return out

    monkeypatch.setattr(T, "variant_loss", poisoned)
    with pytest.raises(TrainingError):
        train(tiny_config(max_steps=6, checkpoint_every=1, max_nonfinite=1), tmp_path / "r", progress=False)
    ck = read_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert ck["step"] == 2 and not any(torch.isnan(v).any() for v in ck["model"].values() if v.is_floating_point())
    assert Diverged.__mro__[1] is TrainingError


def test_nonfinite_weights_are_refused_on_load(tiny_run, tmp_path):
    ck = torch.load(tiny_run("cI-MMVAE") / "checkpoint.pt", weights_only=True)
    ck["model"] = {k: v * math.nan if v.is_floating_point() else v for k, v in ck["model"].items()}
    torch.save(ck, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="non-finite weights"):
        engine.load(tmp_path)


BAD_CONFIGS = [
    (None, "must be a JSON object"), ([1, 2], "must be a JSON object"),
    ({"variant": None}, "variant must be a string"), ({"model": [1]}, "section 'model' must be a JSON object"),
    ({"model": {"latent_dim": "20"}}, "model.latent_dim must be int"),
    ({"model": {"latent_dim": 20.0}}, "model.latent_dim must be int"),
    ({"train": {"lr": "fast"}}, "train.lr must be float"), ({"objective": {"dreg": 1}}, "objective.dreg must be bool"),
    ({"optimizer": {}}, "unknown config entries"), ({"variant": "VAE"}, "unknown model 'VAE'"),
]


@pytest.mark.parametrize("bad, message", BAD_CONFIGS)
def test_malformed_embedded_configs_are_clear_errors(tiny_run, tmp_path, bad, message):
    ck = torch.load(tiny_run("cI-MMVAE") / "checkpoint.pt", weights_only=True)
    ck["config"] = bad if not isinstance(bad, dict) else {**ck["config"], **bad}
    torch.save(ck, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="embedded config is invalid") as e:
        engine.load(tmp_path)
    assert message in str(e.value)


def test_foreign_checkpoint_files_are_clear_errors(tiny_run, tmp_path):
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "checkpoint.pt").write_text("every bird sings\n")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        engine.load(tmp_path / "text")
    ck = torch.load(tiny_run("cI-MMVAE") / "checkpoint.pt", weights_only=True)
    ck["config"]["data"]["dataset"] = "cub-synthetic"
    torch.save(ck, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="another dataset"):
        engine.load(tmp_path)


def test_bad_train_flags_are_refused_before_any_write(tmp_path, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    for out, message in ((tmp_path / "r", "batch_size must be >= 2"), (afile, "is an existing file"),
                         (afile / "sub", "is a file, not a directory")):
        argv = ["train", *TINY_FLAGS, "--out", str(out)]
        argv[argv.index("16")] = "1" if out == tmp_path / "r" else "16"
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit):
        main(["train", "--alpha", "nan"])
    assert "finite" in capsys.readouterr().err
