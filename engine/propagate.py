"""Label propagation by relatedness (paper §4.5, Figure 7) and the Figure 8f comparison.

Fr: the full related set (the train pairs). Sr: n% of Fr. Fm: the rest of Fr mixed with as many
random unrelated pairs (labels differ). Sm: Sr's related pairs plus as many random re-matchings of
Sr's own items whose labels differ. A model g is trained on Sr; a threshold on its relatedness
score (PMI for the VAEs, minus the embedding distance for the Siamese baseline) is fitted on Sm
and applied to Fm, where precision, recall and F1 are reported. ``--retrain`` trains g again on Sr
plus the Fm pairs predicted related and evaluates g before and after.

    python -m engine propagate --model cI-MMVAE --related-fraction 0.1 [--retrain] [--json]
    python -m engine propagate --compare --preset cpu --out reports/relatedness
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import engine
from engine.checkpoints import atomic_write_text
from engine.config import preset_settings, resolve
from engine.data.paired import PairedDataset
from engine.data.pairing import unrelated_pairs
from engine.errors import ConfigError, DataError
from engine.evaluate import evaluate
from engine.options import add_data_args, add_device_arg, arg_type, data_config_from_args, flag_settings
from engine.provenance import git_commit, machine
from engine.registry import build_data
from engine.relatedness import classification_report, evaluate_relatedness, fit_threshold, score_index
from engine.siamese import SiameseConfig, save_siamese, train_siamese
from engine.thresholds import roc_pr_curves
from engine.train import read_metrics, train
from engine.validate import positive_int, variant

COMPARE_MODELS = ("MMVAE", "cI-MMVAE", "cC-MMVAE", "siamese")
PAPER_F8F = {"MMVAE": (36.13, 13.20, 0.193), "cI-MMVAE": (65.70, 17.02, 0.270),
             "cC-MMVAE": (42.71, 15.12, 0.223), "siamese": (68.20, 14.74, 0.242)}
# Scoring sizes per preset (its training settings are engine.config.PRESETS["propagate-<name>"]);
# explicit flags win. "cpu" scores 2000 pairs of Fm.
SCORING = {"paper": dict(fm_pairs=None, eval_pairs=1000), "cpu": dict(fm_pairs=2000, eval_pairs=300)}
# The propagate flags that set run settings, and those settings.
TRAIN_FLAGS = flag_settings(("objective.K", "objective.N", "train.epochs", "train.max_steps", "train.batch_size"))


@dataclass
class Splits:
    """Pair index arrays (P, 2) into the train unimodal sets, and the relatedness of each pair."""

    Fr: np.ndarray
    sr_pos: np.ndarray           # positions in Fr of Sr
    fm_pos: np.ndarray           # positions in Fr of Fm's related pairs
    Fm: np.ndarray
    Fm_related: np.ndarray       # bool (len(Fm),)
    Sm: np.ndarray
    Sm_related: np.ndarray

    @property
    def Sr(self) -> np.ndarray:
        return self.Fr[self.sr_pos]

    def sizes(self) -> dict[str, int]:
        return {"Fr": len(self.Fr), "Sr": len(self.sr_pos), "Fm": len(self.Fm),
                "Fm_related": int(self.Fm_related.sum()), "Sm": len(self.Sm), "Sm_related": int(self.Sm_related.sum())}


def _labels(data) -> tuple[np.ndarray, np.ndarray]:
    return tuple(data.unimodal["train"][name][1].numpy() for name in data.names)


def make_splits(data, related_fraction: float = 0.1, seed: int = 0) -> Splits:
    """Fr, Sr, Fm and Sm of Figure 7 from the train pairs (no training)."""
    if not 0 < related_fraction < 1:
        raise ConfigError(f"related_fraction must be in (0, 1), got {related_fraction}")
    Fr = data.train.index.numpy()
    P = len(Fr)
    n_sr = int(round(related_fraction * P))
    if n_sr < 2 or n_sr >= P:
        raise DataError(f"{related_fraction:.0%} of {P} train pairs leaves Sr with {n_sr} pairs; "
                        "need at least 2 in Sr and 1 left for Fm (raise --related-fraction or the data size)")
    lx, ly = _labels(data)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(P)
    sr_pos, fm_pos = np.sort(perm[:n_sr]), np.sort(perm[n_sr:])
    ua, ub = unrelated_pairs(lx, ly, len(fm_pos), seed)
    Fm = np.concatenate([Fr[fm_pos], np.stack([ua, ub], 1)])
    Fm_related = np.r_[np.ones(len(fm_pos), bool), np.zeros(len(ua), bool)]
    order = rng.permutation(len(Fm))
    Sr = Fr[sr_pos]
    a, b = unrelated_pairs(lx[Sr[:, 0]], ly[Sr[:, 1]], n_sr, seed + 1)
    Sm = np.concatenate([Sr, np.stack([Sr[a, 0], Sr[b, 1]], 1)])
    Sm_related = np.r_[np.ones(n_sr, bool), np.zeros(n_sr, bool)]
    return Splits(Fr, sr_pos, fm_pos, Fm[order], Fm_related[order], Sm, Sm_related)


def restrict(data, index: np.ndarray):
    """The same data with its train pairs replaced by ``index`` (P, 2) (e.g. Sr); test untouched."""
    index = torch.as_tensor(np.asarray(index), dtype=torch.int64)
    lx = data.unimodal["train"][data.names[0]][1]
    train = PairedDataset(data.train.modalities, index, lx[index[:, 0]], data.names)
    return dataclasses.replace(data, train=train)


def subsample_balanced(related: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Positions of at most ``n`` items, keeping the related/unrelated proportions (None: all)."""
    if n is None or n >= len(related):
        return np.arange(len(related))
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(related), np.flatnonzero(~related)
    k = int(round(n * len(pos) / len(related)))
    return np.sort(np.r_[rng.choice(pos, k, replace=False), rng.choice(neg, n - k, replace=False)])


# ---- one pipeline run ----------------------------------------------------------------------------
@dataclass
class PropagateSettings:
    """What one label-propagation run needs beyond the data."""

    model: str = "cI-MMVAE"          # a variant name or "siamese"
    related_fraction: float = 0.1
    K: int = 30                      # training and PMI importance samples
    negatives: int = 5
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    fm_pairs: int | None = None      # score a balanced random subset of Fm of this size (None: all)
    eval_pairs: int = 1000           # related/unrelated test pairs for the before/after AUC
    retrain: bool = False


def run_config(s: PropagateSettings, data_cfg):
    """The RunConfig g trains with: the variant, the data and the training settings of ``s``; the rest
    are the defaults for the dataset (on CUB: latent 64, and the looser bound for MMVAE)."""
    return resolve(overrides={"variant": s.model, **{f"data.{k}": v for k, v in dataclasses.asdict(data_cfg).items()},
                              "objective.K": s.K, "objective.N": s.negatives, "train.epochs": s.epochs,
                              "train.max_steps": s.max_steps, "train.batch_size": s.batch_size,
                              "train.seed": s.seed, "train.device": s.device})


def _train_steps(s: PropagateSettings, n_pairs: int) -> int:
    """Optimiser steps g would take on n_pairs (the Siamese baseline gets as many)."""
    per_epoch = max(n_pairs // min(s.batch_size, n_pairs), 1)
    total = per_epoch * s.epochs
    return total if s.max_steps is None else min(total, s.max_steps)


def _train_scorer(s: PropagateSettings, data_cfg, data, out: Path, splits: Splits, progress: bool):
    """Train g on Sr; return (score(index (P, 2)) -> np.ndarray, g's run directory or None)."""
    X = data.train.modalities
    sr_data = restrict(data, splits.Sr)
    if s.model.lower() == "siamese":
        cub = data_cfg.dataset != "mnist-svhn"
        cfg = SiameseConfig(dataset=data_cfg.dataset, steps=_train_steps(s, len(splits.sr_pos)),
                            batch_size=s.batch_size, seed=s.seed, device=s.device,
                            vocab_size=len(data.vocab) if cub else 0, feature_dim=int(X[0].shape[1]) if cub else 0)
        net = train_siamese(cfg, sr_data.train, progress)
        save_siamese(net, out / "siamese.pt")
        return (lambda idx: net.score(X[0][torch.as_tensor(idx[:, 0])], X[1][torch.as_tensor(idx[:, 1])])), None

    run = out / "g"
    train(run_config(s, data_cfg), run, progress=progress, data=sr_data)
    model = engine.load(run, s.device)
    return (lambda idx: score_index(model, X, idx, s.K, 64, s.seed, progress)), run


def evaluate_run(run_dir: Path, data, s: PropagateSettings, progress: bool = False) -> dict:
    """Metrics of a trained g: the final test IWAE (metrics.jsonl) and the test relatedness AUC,
    plus engine.evaluate.evaluate (coherence, latent accuracy, ...) on ``s.eval_pairs`` test pairs
    and samples with K = ``s.K`` likelihood samples."""
    lines = read_metrics(run_dir)
    model = engine.load(run_dir, s.device)
    rel = evaluate_relatedness(model, data, s.eval_pairs, s.K, s.seed, progress=False)
    res = {"test_iwae": lines[-1]["test_iwae"] if lines else None, "relatedness_auc": rel["auc"],
           "relatedness_average_precision": rel["average_precision"]}
    res["evaluate"] = evaluate(run_dir, samples=s.eval_pairs, ll_samples=s.K, device=s.device, progress=progress,
                               test_pairs=s.eval_pairs, ll_pairs=s.eval_pairs, seed=s.seed, data=data)
    return res


def propagate(settings: PropagateSettings, data_cfg, out: str | Path, data=None, splits: Splits | None = None,
              progress: bool = True) -> dict:
    """Run Figure 7's pipeline once into ``out``; returns sizes, the threshold and its fit on Sm,
    P/R/F1 (and AUC) on Fm, and with ``settings.retrain`` the metrics of g before and after."""
    s, t0, out = settings, time.time(), Path(out)
    is_siamese = s.model.lower() == "siamese"
    if s.retrain and is_siamese:
        raise ConfigError("--retrain retrains a generative model; the siamese baseline only predicts relatedness")
    name = "Siamese" if is_siamese else run_config(s, data_cfg).variant
    data = data if data is not None else build_data(data_cfg)
    splits = splits if splits is not None else make_splits(data, s.related_fraction, s.seed)
    score, run = _train_scorer(s, data_cfg, data, out, splits, progress)
    threshold, fit = fit_threshold(score(splits.Sm), splits.Sm_related, "f1")
    keep = subsample_balanced(splits.Fm_related, s.fm_pairs, s.seed)
    fm_index, fm_related = splits.Fm[keep], splits.Fm_related[keep]
    fm_scores = score(fm_index)
    report = classification_report(fm_scores, fm_related, threshold)
    res = {"model": name, "related_fraction": s.related_fraction, "sizes": {**splits.sizes(), "Fm_scored": len(keep)},
           "score": "minus embedding distance" if is_siamese else f"PMI (IWAE, K={s.K}, scaled likelihoods)",
           "threshold": threshold, "fit_on_Sm": fit,
           **{k: report[k] for k in ("precision", "recall", "f1", "accuracy", "tp", "fp", "tn", "fn")},
           "auc_Fm": roc_pr_curves(fm_scores, fm_related)["roc_auc"]}
    if s.retrain:
        predicted = fm_index[fm_scores >= threshold]
        res["retrain"] = {"pairs": len(splits.sr_pos) + len(predicted), "predicted_related": len(predicted),
                          "before": evaluate_run(run, data, s, progress)}
        train(run_config(s, data_cfg), out / "retrained", progress=progress,
              data=restrict(data, np.concatenate([splits.Sr, predicted])))
        res["retrain"]["after"] = evaluate_run(out / "retrained", data, s, progress)
    res["wall_s"] = round(time.time() - t0, 1)
    atomic_write_text(out / "propagate.json", json.dumps(res, indent=2))
    return res


# ---- Figure 8f comparison ----------------------------------------------------------------------
def compare(settings: PropagateSettings, data_cfg, report_dir: str | Path, runs_dir: str | Path,
            preset: str | None = None, progress: bool = True) -> dict:
    """Figure 8f: MMVAE, cI-MMVAE, cC-MMVAE and the Siamese baseline on the same splits.

    Writes table.md and table.json to ``report_dir``; models go to ``runs_dir``.
    """
    t0 = time.time()
    report_dir, runs_dir = Path(report_dir), Path(runs_dir)
    data = build_data(data_cfg)
    splits = make_splits(data, settings.related_fraction, settings.seed)
    rows = []
    for name in COMPARE_MODELS:
        s = dataclasses.replace(settings, model=name, retrain=False)
        rows.append(propagate(s, data_cfg, runs_dir / name, data, splits, progress))
    wall = time.time() - t0
    header = {"git_commit": git_commit(report_dir), "machine": machine(settings.device), "wall_s": round(wall, 1),
              "preset": preset, "settings": {k: v for k, v in dataclasses.asdict(settings).items()
                                             if k not in ("model", "retrain")},
              "data": dataclasses.asdict(data_cfg), "sizes": rows[0]["sizes"]}
    result = {**header, "rows": rows}
    lines = ["# Relatedness prediction on Fm (paper Figure 8f)", "",
             f"- git commit: {header['git_commit']}", f"- machine: {header['machine']}",
             f"- wall time: {wall / 60:.1f} min (all four models: training on Sr, scoring Sm and Fm)",
             f"- preset: {preset}; settings: {json.dumps(header['settings'])}",
             f"- data: {data_cfg.dataset} ({data_cfg.source}), data fraction {data_cfg.data_fraction}, "
             f"dm {data_cfg.dm}; sizes: {json.dumps(header['sizes'])}",
             "- threshold: maximises F1 on Sm; precision/recall/F1 on (the scored part of) Fm; "
             "AUC on Fm is threshold-free", "",
             "| Method | Precision (%) | Recall (%) | F1 | AUC (Fm) | paper P (%) | paper R (%) | paper F1 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in zip(COMPARE_MODELS, rows):
        pp, pr, pf = PAPER_F8F[name]
        lines.append(f"| {r['model']} | {100 * r['precision']:.2f} | {100 * r['recall']:.2f} | {r['f1']:.3f} | "
                     f"{r['auc_Fm']:.3f} | {pp:.2f} | {pr:.2f} | {pf:.3f} |")
    report_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(report_dir / "table.md", "\n".join(lines) + "\n")
    atomic_write_text(report_dir / "table.json", json.dumps(result, indent=2))
    return result


# ---- CLI ---------------------------------------------------------------------------------------
def _model_name(text: str) -> str:
    if text.strip().lower() == "siamese":
        return "siamese"
    return arg_type(variant)(text)


def add_parser(sub) -> None:
    p = sub.add_parser("propagate", help="label propagation by relatedness (paper §4.5, Figures 7 and 8f)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=_model_name, default="cI-MMVAE", help="a variant (e.g. cI-MMVAE) or 'siamese'")
    p.add_argument("--related-fraction", type=float, default=0.1, help="|Sr| / |Fr| (default 0.1)")
    p.add_argument("--retrain", action="store_true", help="retrain g on Sr + predicted related pairs; "
                                                           "report metrics before and after")
    p.add_argument("--compare", action="store_true",
                   help="Figure 8f: MMVAE, cI-MMVAE, cC-MMVAE and Siamese on the same splits")
    p.add_argument("--preset", choices=tuple(SCORING), default="paper",
                   help="settings for unset flags: paper (§4 settings) or cpu (small: data fraction 0.1, dm 5, "
                        "K 5, 120 steps at batch 32, 2000 scored Fm pairs; ~20 min for --compare on 2 cores)")
    p.add_argument("--out", default=None, help="output directory (default runs/propagate-<model>-s<seed>; "
                                               "with --compare the report directory, default reports/relatedness)")
    p.add_argument("--runs", default=None,
                   help="--compare: where the models train (default runs/propagate-compare-s<seed>)")
    add_data_args(p, data_fraction=None, dm=None)
    for flag, help_ in (("--K", "importance samples for training and PMI"), ("--negatives", "N negatives per pair"),
                        ("--epochs", "training epochs on Sr"), ("--max-steps", "stop training after this many steps"),
                        ("--batch-size", "training batch size"),
                        ("--fm-pairs", "score a balanced random subset of Fm of this size"),
                        ("--eval-pairs", "test pairs per class for the --retrain AUC")):
        p.add_argument(flag, type=arg_type(positive_int), default=None, help=help_ + " (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    add_device_arg(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_propagate)


def settings_from_args(a: argparse.Namespace):
    """(PropagateSettings, DataConfig): explicit flags, else the preset's values."""
    preset = {**preset_settings(f"propagate-{a.preset}"), **SCORING[a.preset]}

    def pick(dest, name=None):
        v = getattr(a, dest)
        return preset[name or dest] if v is None else v

    data_cfg = data_config_from_args(a, data_fraction=pick("data_fraction", "data.data_fraction"),
                                     dm=pick("dm", "data.dm"), seed=a.seed)
    training = {dest: pick(dest, names[0]) for dest, names in TRAIN_FLAGS.items()}
    s = PropagateSettings(a.model, a.related_fraction, seed=a.seed, device=a.device, fm_pairs=pick("fm_pairs"),
                          eval_pairs=pick("eval_pairs"), retrain=a.retrain, **training)
    if not 0 < s.related_fraction < 1:
        raise ConfigError(f"--related-fraction must be in (0, 1), got {s.related_fraction}")
    return s, data_cfg


def run_propagate(a: argparse.Namespace) -> int:
    s, data_cfg = settings_from_args(a)
    progress = not a.no_progress
    if a.compare:
        res = compare(s, data_cfg, a.out or "reports/relatedness", a.runs or f"runs/propagate-compare-s{s.seed}",
                      a.preset, progress)
        print(json.dumps(res, indent=2) if a.json else (Path(a.out or "reports/relatedness") / "table.md").read_text())
        return 0
    out = a.out or f"runs/propagate-{s.model}-s{s.seed}"
    res = propagate(s, data_cfg, out, progress=progress)
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['model']}: Sr {res['sizes']['Sr']} pairs; threshold {res['threshold']:.3f}; on Fm "
              f"({res['sizes']['Fm_scored']} pairs) precision {res['precision']:.3f} recall {res['recall']:.3f} "
              f"F1 {res['f1']:.3f} AUC {res['auc_Fm']:.3f}; wrote {Path(out) / 'propagate.json'}")
        if "retrain" in res:
            print(json.dumps(res["retrain"], indent=2))
    return 0


__all__ = ["Splits", "make_splits", "restrict", "subsample_balanced", "PropagateSettings", "run_config",
           "evaluate_run", "propagate", "compare", "SCORING", "add_parser"]
