"""Command line: ``python -m engine <command> ...``; ``--help`` on each command lists its flags."""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path

from engine.config import DATASETS, DataConfig, ModelConfig, ObjectiveConfig, RunConfig, TrainConfig
from engine.errors import ConfigError, EngineError
from engine.registry import VARIANTS, parse_variant, variant_name

# Modules that add their own subcommands through add_parser(subparsers).
COMMAND_MODULES = ("engine.evaluate", "engine.generate", "engine.reproduce", "engine.relatedness",
                   "engine.propagate", "engine.retrieval")


def _variant(text: str) -> str:
    try:
        return variant_name(*parse_variant(text))
    except EngineError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def fraction(text: str) -> float:
    v = float(text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return v


def positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def gamma_value(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (or 'inf' for the baseline), got {text}")
    return v


def positive_float(text: str) -> float:
    v = float(text)
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def nonnegative_float(text: str) -> float:
    v = float(text)
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


def positive_or_inf(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (or 'inf' for never), got {text}")
    return v


def nonnegative_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def add_data_args(p: argparse.ArgumentParser) -> None:
    """Flags that choose the data (shared by train and the evaluation commands)."""
    p.add_argument("--dataset", default="mnist-svhn", choices=DATASETS, help="dataset (default mnist-svhn)")
    p.add_argument("--source", default="offline", choices=("offline", "real"),
                   help="offline: embedded default that needs no download; real: torchvision/CUB files under --data-root")
    p.add_argument("--data-root", default=None, help="root of the real datasets (or of the synthetic CUB)")
    p.add_argument("--download", action="store_true", help="let torchvision download MNIST/SVHN (needs internet)")
    p.add_argument("--data-fraction", type=fraction, default=1.0, help="fraction n of each unimodal train set (§4.4)")
    p.add_argument("--dm", type=positive_int, default=30, help="same-digit partners per instance (§4.1, default 30)")
    p.add_argument("--features", default="efficientnet-lite0", choices=("efficientnet-lite0", "resnet101"),
                   help="CUB image features (resnet101 needs its weights on disk)")


# Each train flag (argparse dest) and the RunConfig settings it sets.
TRAIN_FLAGS = {
    "model": ("variant",), "dataset": ("data.dataset",), "source": ("data.source",), "data_root": ("data.root",),
    "download": ("data.download",), "data_fraction": ("data.data_fraction",), "dm": ("data.dm",),
    "features": ("data.features",), "latent_dim": ("model.latent_dim",), "learn_prior": ("model.learn_prior",),
    "alpha": ("model.alpha",), "K": ("objective.K",), "negatives": ("objective.N",), "gamma": ("objective.gamma",),
    "dreg": ("objective.dreg",), "looser": ("objective.looser",), "epochs": ("train.epochs",),
    "max_steps": ("train.max_steps",), "batch_size": ("train.batch_size",), "lr": ("train.lr",),
    "seed": ("data.seed", "train.seed"), "device": ("train.device",), "max_nonfinite": ("train.max_nonfinite",),
    "k_chunk": ("train.k_chunk",), "precision": ("train.precision",),
    "checkpoint_every": ("train.checkpoint_every",), "checkpoint_minutes": ("train.checkpoint_minutes",),
    "divergence_tolerance": ("train.divergence_tolerance",),
}


def config_from_args(a: argparse.Namespace) -> RunConfig:
    family, contrastive = parse_variant(a.model)
    cfg = RunConfig(data=DataConfig(), model=ModelConfig(), objective=ObjectiveConfig(), train=TrainConfig())
    for dest, settings in TRAIN_FLAGS.items():
        for setting in settings:
            section, _, name = setting.rpartition(".")
            setattr(getattr(cfg, section) if section else cfg, name, getattr(a, dest))
    cfg.variant, cfg.model.family, cfg.objective.contrastive = variant_name(family, contrastive), family, contrastive
    if a.latent_dim is None:
        cfg.model.latent_dim = 20 if a.dataset == "mnist-svhn" else 64
    return cfg.validate()


def given_settings(argv: list[str]) -> dict[str, str]:
    """The settings the train flags typed in ``argv`` set (dotted name -> flag), defaults left out."""
    parser = argparse.ArgumentParser(add_help=False)
    train_parser = add_train_parser(parser.add_subparsers(dest="command"))
    unset = object()
    train_parser.set_defaults(**{dest: unset for dest in TRAIN_FLAGS})
    a = parser.parse_args(argv)
    return {s: "--" + d.replace("_", "-") for d, settings in TRAIN_FLAGS.items() if getattr(a, d) is not unset
            for s in settings}


def add_train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train one of the nine variants",
                       description="Train a variant; writes config.json, checkpoint.pt and metrics.jsonl to --out.")
    p.add_argument("--model", type=_variant, default="MMVAE", help=f"variant, case-insensitive: {', '.join(VARIANTS)}")
    add_data_args(p)
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--K", type=positive_int, default=30, help="importance samples (default 30)")
    p.add_argument("--negatives", type=positive_int, default=5, help="N in-batch negatives per pair (default 5)")
    p.add_argument("--gamma", type=gamma_value, default=2.0, help="gamma of eq. (4) (default 2; inf = baseline)")
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--latent-dim", type=positive_int, default=None,
                   help="latent dimensions (default 20 for MNIST-SVHN, 64 for CUB as Shi et al. 2019)")
    p.add_argument("--learn-prior", action="store_true", help="learnable prior scale (MMVAE)")
    p.add_argument("--alpha", type=nonnegative_float, default=0.01, help="JMVAE-kl weight (default 0.01)")
    p.add_argument("--dreg", action="store_true", help="DReG gradients for the IWAE term (MMVAE; with --looser, "
                        "Shi et al. 2019's m_dreg_looser, their MNIST-SVHN setting)")
    p.add_argument("--looser", action="store_true",
                   help="MMVAE: average the IWAE of each expert's samples instead of one IWAE over all "
                        "(Shi et al. 2019's looser bound; keeps both experts trained on CUB)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--max-nonfinite", type=positive_int, default=10,
                   help="stop after this many non-finite losses in a row")
    p.add_argument("--k-chunk", type=positive_int, default=None,
                   help="evaluate the K samples in chunks of this size: flat peak memory, same result")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="bf16: encoders and decoders under bf16 autocast (CPU with AVX-512 BF16 or AMX, CUDA); "
                        "likelihoods, log weights and the optimiser stay fp32")
    p.add_argument("--checkpoint-every", type=positive_int, default=500,
                   help="save checkpoint.pt every this many steps (default 500)")
    p.add_argument("--checkpoint-minutes", type=positive_or_inf, default=10.0,
                   help="also save when this many minutes passed since the last save (default 10; inf: never)")
    p.add_argument("--divergence-tolerance", type=positive_or_inf, default=1.0,
                   help="stop when the held-out IWAE falls more than this times |best| below the best "
                        "(default 1: twice as bad; inf: never)")
    p.add_argument("--out", default=None, help="run directory (default runs/<MODEL>-<dataset>-s<seed>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the checkpoint in --out where it stopped (an error if there is none)")
    p.add_argument("--allow-fresh", action="store_true",
                   help="with --resume: start a new run where --out holds no checkpoint yet")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)
    return p


def run_train(a: argparse.Namespace) -> int:
    from engine.checkpoints import BEST_NAME
    from engine.errors import Interrupted
    from engine.train import read_metrics, train

    if a.allow_fresh and not a.resume:
        raise ConfigError("--allow-fresh only applies with --resume")
    cfg = config_from_args(a)
    out = Path(a.out or f"runs/{cfg.variant}-{cfg.data.dataset}-s{cfg.train.seed}")
    try:
        ck = train(cfg, out, resume=a.resume, progress=not a.no_progress, allow_fresh=a.allow_fresh,
                   given=given_settings(a.argv) if a.resume else None)
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(f"interrupted: {_saved_state(out)}", file=sys.stderr)
        return 130
    last = read_metrics(out)[-1:] or [{}]
    best = out / BEST_NAME
    print(json.dumps({"checkpoint": str(ck), "best": str(best) if best.exists() else None, **last[0]}, indent=2))
    return 0


def _saved_state(out: Path) -> str:
    """What ``out`` holds for a user who stopped training: its checkpoint's step, or that there is none."""
    from engine.checkpoints import CHECKPOINT_NAME, read_checkpoint

    ck = out / CHECKPOINT_NAME
    if not ck.is_file():
        return f"no checkpoint was written to {out}; there is nothing to resume"
    try:
        step = read_checkpoint(ck).get("step", "?")
    except EngineError as e:
        return f"{ck} cannot be read ({e})"
    return f"{ck} (step {step}) is kept; continue with --resume --out {out}"


def add_data_parser(sub) -> None:
    p = sub.add_parser("data", help="prepare data: every offline cache at once, or one data set")
    dsub = p.add_subparsers(dest="what", required=True)
    r = dsub.add_parser("prepare", help="build every offline cache the dashboard uses (a demo machine in one command)",
                        description="Render the SVHN stand-in, draw the synthetic birds and extract their "
                                    "EfficientNet-Lite0 features into $CMVAE_CACHE (about 3.5 min on 2 CPU cores); "
                                    "the dashboard's pages then open without building anything.")
    r.add_argument("--dataset", nargs="+", default=list(OFFLINE_DEFAULTS), choices=list(OFFLINE_DEFAULTS),
                   help="which offline datasets (default: all)")
    r.set_defaults(func=run_data_prepare)
    c = dsub.add_parser("cub-synthetic", help="write procedural birds and captions in the CUB layout")
    c.add_argument("--out", required=True)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--images", type=positive_int, default=None, help="number of images (default: the generator's)")
    c.add_argument("--features", default=None, choices=("efficientnet-lite0", "resnet101"),
                   help="also extract and cache these image features")
    c.set_defaults(func=run_data_cub)
    s = dsub.add_parser("mnist-svhn", help="load (and cache) the MNIST-SVHN sources and print their sizes")
    add_data_args(s)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=run_data_mnist_svhn)


OFFLINE_DEFAULTS = ("mnist-svhn", "cub-synthetic")


def run_data_prepare(a: argparse.Namespace) -> int:
    import time

    from engine.data.cache import cache_dir
    from engine.progress import TqdmProgress
    from engine.registry import build_data

    for name in a.dataset:
        start = time.perf_counter()
        data = build_data(DataConfig(dataset=name), progress=TqdmProgress())
        print(f"{name}: {len(data.train):,} train / {len(data.test):,} test pairs ready "
              f"({time.perf_counter() - start:.3g} s)", flush=True)
    print(f"offline caches are in {cache_dir()}")
    return 0


def run_data_cub(a: argparse.Namespace) -> int:
    from engine.data import synth_birds
    from engine.progress import TqdmProgress

    kwargs = {"seed": a.seed} if a.images is None else {"seed": a.seed, "n_images": a.images}
    root = synth_birds.write_synthetic_cub(Path(a.out), progress=TqdmProgress(), **kwargs)
    print(f"wrote synthetic CUB to {root}")
    if a.features:
        from engine.data.cub import build_cub

        data = build_cub(DataConfig(dataset="cub-synthetic", root=str(a.out), seed=a.seed, features=a.features))
        print(f"features: {tuple(data.train.modalities[0].shape)} train")
    return 0


def run_data_mnist_svhn(a: argparse.Namespace) -> int:
    from engine.data.mnist_svhn import build_mnist_svhn

    a.dataset = "mnist-svhn"
    d = build_mnist_svhn(DataConfig("mnist-svhn", a.source, a.data_root, a.download, a.data_fraction, a.dm, a.seed))
    print(json.dumps({"train_pairs": len(d.train), "test_pairs": len(d.test), "sources": d.sources}, indent=2))
    return 0


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a small inference-only copy of a run (fp16 weights, no optimiser)")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="directory for the exported checkpoint")
    p.add_argument("--fp32", action="store_true", help="keep fp32 weights")
    p.set_defaults(func=run_export)


def run_export(a: argparse.Namespace) -> int:
    from engine.checkpoints import export_checkpoint

    path = export_checkpoint(a.run_dir, a.out, half=not a.fp32)
    print(f"exported {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_data_parser(sub)
    add_export_parser(sub)
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


__all__ = ["main", "build_parser", "add_data_args", "config_from_args", "given_settings", "TRAIN_FLAGS"]
