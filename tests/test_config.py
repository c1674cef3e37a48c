"""The config schema (engine/config.py): one definition per setting drives the CLI, presets and resume."""
import dataclasses
import json

import pytest

import engine.cli
import engine.config as C
from engine import validate as V
from engine.errors import ConfigError


@pytest.fixture
def dummy_setting(monkeypatch):
    """The schema with one more setting, train.dummy_rate (flag --dummy-rate, not safe on resume)."""
    train = dataclasses.make_dataclass(
        "TrainConfig", [("dummy_rate", int, C.setting(7, "a setting added by a test", V.positive_int))],
        bases=(C.TrainConfig,))
    run = dataclasses.make_dataclass("RunConfig", [("train", "TrainConfig", dataclasses.field(default_factory=train))],
                                     bases=(C.RunConfig,))
    run.__module__ = C.__name__
    for module in (C, engine.cli):
        monkeypatch.setattr(module, "RunConfig", run)
    monkeypatch.setattr(C, "TrainConfig", train)
    return run


def _train_args(argv):
    a = engine.cli.build_parser().parse_args(argv)
    a.argv = argv
    return a


def test_a_new_setting_reaches_the_cli_the_saved_config_and_resume(dummy_setting, tmp_path, capsys):
    with pytest.raises(SystemExit):
        engine.cli.main(["train", "--help"])
    assert "--dummy-rate" in capsys.readouterr().out and "a setting added by a test" in C.settings()["train.dummy_rate"].metadata["help"]
    with pytest.raises(SystemExit):
        engine.cli.main(["train", "--dummy-rate", "0"])
    assert "must be a positive integer" in capsys.readouterr().err

    cfg = engine.cli.config_from_args(_train_args(["train", "--dummy-rate", "3"]))
    assert cfg.train.dummy_rate == 3
    cfg.save(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["train"]["dummy_rate"] == 3
    saved = dummy_setting.load(tmp_path / "config.json")
    assert saved.train.dummy_rate == 3
    again = engine.cli.config_from_args(_train_args(["train", "--config", str(tmp_path / "config.json"), "--K", "4"]))
    assert (again.train.dummy_rate, again.objective.K) == (3, 4)

    changed = engine.cli.config_from_args(_train_args(["train", "--dummy-rate", "5", "--max-steps", "9"]))
    with pytest.raises(ConfigError, match=r"--dummy-rate 5 \(the run has 3\)"):
        C.resume_config(saved, changed, {"train.dummy_rate": "--dummy-rate", "train.max_steps": "--max-steps"}, "ck")
    merged, changes = C.resume_config(saved, changed, {"train.max_steps": "--max-steps"}, "ck")
    assert merged.train.max_steps == 9 and merged.train.dummy_rate == 3 and changes == ["--max-steps 9 (was None)"]


def test_dataset_dependent_defaults_and_explicit_flags():
    assert (C.resolve().model.latent_dim, C.resolve().objective.looser) == (20, True)     # MMVAE: looser
    assert not C.resolve(overrides={"variant": "cI-MVAE"}).objective.looser
    cub = C.resolve(overrides={"variant": "cI-MMVAE"}, dataset="cub-synthetic")
    assert (cub.model.latent_dim, cub.objective.looser, cub.objective.contrastive) == (64, True, "iwae")
    assert not C.resolve(overrides={"variant": "MVAE"}, dataset="cub").objective.looser
    a = _train_args(["train", "--dataset", "cub-synthetic", "--no-looser", "--latent-dim", "8"])
    cfg = engine.cli.config_from_args(a)
    assert (cfg.model.latent_dim, cfg.objective.looser) == (8, False)
    with pytest.raises(ConfigError, match="unknown settings"):
        C.resolve(overrides={"objective.k": 3})
    with pytest.raises(ConfigError, match="unknown preset"):
        C.resolve("nope")


def test_presets_are_partial_configs_shared_by_reproduce_propagate_and_make_sh():
    from pathlib import Path

    from engine.reproduce import cpu_preset, paper_preset

    cpu = cpu_preset()
    assert C.resolve("reproduce-cpu").objective.K == cpu.config.objective.K == 2
    assert cpu.run_config("MMVAE", 1.0, 0, cpu.gamma).train.max_steps == C.PRESETS["reproduce-cpu"]["train.max_steps"]
    assert cpu.settings == C.PRESETS["reproduce-cpu"] and cpu_preset().config.train.epochs == 100
    assert paper_preset().config.train.epochs == 30 and paper_preset().config.objective.K == 30
    birds = C.resolve("shipped-cub-synthetic", {"variant": "cI-MMVAE"}, "cub-synthetic")
    assert birds.objective.looser and birds.model.latent_dim == 64 and birds.train.max_steps == 20000
    assert birds.model.likelihood_weights == "0.025,5" and birds.train.precision == "bf16"
    checkpoints = Path(__file__).resolve().parents[1] / "checkpoints"
    make = (checkpoints / "make.sh").read_text()
    assert "--preset shipped-mnist-svhn" in make and "--preset shipped-cub-synthetic" in make
    for path in sorted(checkpoints.glob("*/config.json")):
        dataset = "mnist-svhn" if path.parent.name.startswith("mnist-svhn") else "cub-synthetic"
        variant = path.parent.name[len(dataset) + 1:]
        saved, made = C.flat(C.RunConfig.load(path)), C.flat(C.resolve(f"shipped-{dataset}", {"variant": variant}, dataset))
        skip = set(C.marked("derived"))
        assert {k: v for k, v in saved.items() if k not in skip} == {k: v for k, v in made.items() if k not in skip}, path
    assert C.resolve("shipped-mnist-svhn").train.precision == "bf16"


def test_propagate_on_cub_trains_the_cub_defaults():
    from engine.propagate import PropagateSettings, run_config

    cfg = run_config(PropagateSettings(model="MMVAE", K=2, device="cpu"), C.DataConfig(dataset="cub-synthetic"))
    assert (cfg.model.latent_dim, cfg.objective.looser, cfg.objective.K) == (64, True, 2)
    mnist = run_config(PropagateSettings(model="cI-MMVAE"), C.DataConfig())
    assert (mnist.model.latent_dim, mnist.objective.looser) == (20, True)


def test_shipped_configs_still_load():
    from pathlib import Path

    shipped = sorted((Path(__file__).resolve().parents[1] / "checkpoints").glob("*/config.json"))
    assert shipped
    for path in shipped:
        cfg = C.RunConfig.load(path).validate()
        assert C.flat(cfg)["variant"] == cfg.variant


def test_likelihood_weights_replace_the_automatic_scaling_and_are_checked():
    from engine.registry import model_from_config

    cfg = C.resolve(None, {"variant": "MMVAE"}, "mnist-svhn")
    auto = model_from_config(cfg).llik_scaling.tolist()
    assert auto == pytest.approx([3072 / 784, 1.0])
    cfg.model.likelihood_weights = "1, 2.5"
    cfg.validate()
    assert model_from_config(cfg).llik_scaling.tolist() == pytest.approx([1.0, 2.5])
    back = C.RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert model_from_config(back).llik_scaling.tolist() == pytest.approx([1.0, 2.5])
    for bad in ("2", "1,0", "1,x", "1,nan"):
        cfg.model.likelihood_weights = bad
        with pytest.raises(ConfigError, match="likelihood_weights"):
            cfg.validate()
    cfg.model.likelihood_weights = "1,2,3"
    with pytest.raises(ConfigError, match="one weight per modality"):
        model_from_config(cfg)


def test_objective_describe_says_how_a_run_was_trained():
    """The Compare page's one-line objective: eq. (4)'s settings only for contrastive variants, and the
    tight phase (with its gamma) where there is one."""
    phased = C.resolve("shipped-mnist-svhn", {"variant": "cI-MMVAE", "objective.tight_gamma": 4.0}, "mnist-svhn")
    assert phased.objective.describe() == ("K=2, looser bound to step 60,000, then tight, "
                                           "eq. (4) γ=2 (4 from step 60,000), N=5, term 2 by IWAE")
    baseline = C.resolve("shipped-mnist-svhn", {"variant": "MMVAE", "objective.tight_gamma": 4.0}, "mnist-svhn")
    assert baseline.objective.describe() == "K=2, looser bound to step 60,000, then tight"
    more = C.resolve("shipped-mnist-svhn", {"variant": "MMVAE", "objective.tight_K": 10}, "mnist-svhn")
    assert more.objective.describe() == "K=2, looser bound to step 60,000, then tight at K=10"
    mvae = C.resolve(overrides={"variant": "cC-MVAE", "objective.K": 5}, dataset="mnist-svhn")
    assert mvae.objective.describe() == "K=5, eq. (4) γ=2, N=5, term 2 by CUBO"
