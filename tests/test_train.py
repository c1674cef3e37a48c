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
