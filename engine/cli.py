"""Command line: ``python -m engine <command> ...``; ``--help`` on each command lists its flags."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from engine.checkpoints import BEST_NAME, CHECKPOINT_NAME, export_checkpoint, read_checkpoint
from engine.config import FEATURES, PRESETS, DataConfig, RunConfig, preset_settings, resolve
from engine.data import synth_birds
from engine.data.cache import cache_dir
from engine.data.cub import build_cub, ship_test_features
from engine.data.mnist_svhn import build_mnist_svhn
from engine.errors import ConfigError, EngineError, Interrupted
from engine.options import (add_data_args, add_setting_flags, arg_type, data_config_from_args, flag_settings,
                            overrides_from_args)
from engine.progress import TqdmProgress
from engine.registry import build_data
from engine.train import read_metrics, train
from engine.validate import positive_int

# Modules that add their own subcommands through add_parser(subparsers).
COMMAND_MODULES = ("engine.evaluate", "engine.generate", "engine.reproduce", "engine.relatedness",
                   "engine.propagate", "engine.retrieval")


def config_from_args(a: argparse.Namespace) -> RunConfig:
    """The run the train flags ask for: --config FILE (else the defaults), --preset, then the flags typed."""
    base = RunConfig.load(a.config) if a.config else None
    return resolve(a.preset, overrides_from_args(a, given_flags(a.argv)), base=base)


def given_flags(argv: list[str]) -> list[str]:
    """The dests of the setting flags typed in the train command line ``argv`` (defaults left out)."""
    parser = argparse.ArgumentParser(add_help=False)
    train_parser = add_train_parser(parser.add_subparsers(dest="command"))
    unset = object()
    dests = flag_settings()
    train_parser.set_defaults(**{dest: unset for dest in dests})
    a = parser.parse_args(argv)
    return [d for d in dests if getattr(a, d) is not unset]


def given_settings(argv: list[str], preset: str | None = None) -> dict[str, str]:
    """The settings the caller chose (dotted name -> how to name it in messages): those of ``preset``,
    then those the train flags typed in ``argv`` set, defaults left out. On resume these are the
    settings compared with the run's own, so a changed preset continues a run (checkpoints/make.sh)."""
    table = flag_settings()
    chosen = {s: f"--preset {preset} ({s})" for s in preset_settings(preset)}
    return {**chosen, **{s: "--" + d.replace("_", "-") for d in given_flags(argv) for s in table[d]}}


def add_train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train one of the nine variants",
                       description="Train a variant; writes config.json, checkpoint.pt and metrics.jsonl to --out. "
                                   "Every setting has a flag (generated from engine.config).")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="start from this saved config.json (the flags typed override it)")
    p.add_argument("--preset", default=None, choices=tuple(PRESETS), help="a named partial config (flags override it)")
    add_setting_flags(p)
    p.add_argument("--out", default=None, help="run directory (default runs/<MODEL>-<dataset>-s<seed>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the checkpoint in --out where it stopped (an error if there is none)")
    p.add_argument("--allow-fresh", action="store_true",
                   help="with --resume: start a new run where --out holds no checkpoint yet")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)
    return p


def run_train(a: argparse.Namespace) -> int:
    if a.allow_fresh and not a.resume:
        raise ConfigError("--allow-fresh only applies with --resume")
    if a.config and a.resume:
        raise ConfigError("--resume continues the checkpoint's own config; --config starts a new run")
    cfg = config_from_args(a)
    out = Path(a.out or f"runs/{cfg.variant}-{cfg.data.dataset}-s{cfg.train.seed}")
    try:
        ck = train(cfg, out, resume=a.resume, progress=not a.no_progress, allow_fresh=a.allow_fresh,
                   given=given_settings(a.argv, a.preset) if a.resume else None)
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
    f = dsub.add_parser("ship-features", help="recompute the synthetic birds' test features shipped in checkpoints/features",
                        description="Draw the default synthetic CUB (in $CMVAE_CACHE) and extract its 600 test "
                                    "images' features afresh into DIR/cub-synthetic-test_<features>.npy/.json, "
                                    "with the extractor and an image checksum that say when they apply.")
    f.add_argument("--out", default=None, help="folder (default: checkpoints/features of this checkout)")
    f.add_argument("--features", default="efficientnet-lite0", choices=FEATURES)
    f.set_defaults(func=run_data_ship_features)
    c = dsub.add_parser("cub-synthetic", help="write procedural birds and captions in the CUB layout")
    c.add_argument("--out", required=True)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--images", type=arg_type(positive_int), default=None, help="number of images (default: the generator's)")
    c.add_argument("--features", default=None, choices=FEATURES,
                   help="also extract and cache these image features")
    c.set_defaults(func=run_data_cub)
    s = dsub.add_parser("mnist-svhn", help="load (and cache) the MNIST-SVHN sources and print their sizes")
    add_data_args(s)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=run_data_mnist_svhn)


OFFLINE_DEFAULTS = ("mnist-svhn", "cub-synthetic")


def run_data_prepare(a: argparse.Namespace) -> int:
    for name in a.dataset:
        start = time.perf_counter()
        data = build_data(DataConfig(dataset=name), progress=TqdmProgress())
        print(f"{name}: {len(data.train):,} train / {len(data.test):,} test pairs ready "
              f"({time.perf_counter() - start:.3g} s)", flush=True)
    print(f"offline caches are in {cache_dir()}")
    return 0


def run_data_ship_features(a: argparse.Namespace) -> int:
    stem = ship_test_features(Path(a.out) if a.out else None, a.features, progress=TqdmProgress())
    print(f"wrote {stem}.npy and {stem}.json")
    return 0


def run_data_cub(a: argparse.Namespace) -> int:
    kwargs = {"seed": a.seed} if a.images is None else {"seed": a.seed, "n_images": a.images}
    root = synth_birds.write_synthetic_cub(Path(a.out), progress=TqdmProgress(), **kwargs)
    print(f"wrote synthetic CUB to {root}")
    if a.features:
        data = build_cub(DataConfig(dataset="cub-synthetic", root=str(a.out), seed=a.seed, features=a.features))
        print(f"features: {tuple(data.train.modalities[0].shape)} train")
    return 0


def run_data_mnist_svhn(a: argparse.Namespace) -> int:
    d = build_mnist_svhn(data_config_from_args(a, dataset="mnist-svhn", seed=a.seed))
    print(json.dumps({"train_pairs": len(d.train), "test_pairs": len(d.test), "sources": d.sources}, indent=2))
    return 0


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a small inference-only copy of a run (fp16 weights, no optimiser)")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="directory for the exported checkpoint")
    p.add_argument("--fp32", action="store_true", help="keep fp32 weights")
    p.set_defaults(func=run_export)


def run_export(a: argparse.Namespace) -> int:
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


__all__ = ["main", "build_parser", "config_from_args", "given_settings"]
