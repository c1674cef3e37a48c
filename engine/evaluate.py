"""Evaluate a trained run with the paper's metrics (§4.2, Table 1; Appendix G) -> metrics.json.

``python -m engine evaluate RUN_DIR [--json] [--samples N] [--ll-samples S]`` writes
``metrics.json`` beside the checkpoint (atomically) and prints it. MNIST-SVHN runs get latent
accuracy, joint / cross / synergy coherence, diversity and IWAE log-likelihoods; CUB runs are
handed to ``engine.metrics.cca.evaluate_cub``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import engine
from engine.checkpoints import atomic_write_text
from engine.errors import ConfigError
from engine.metrics import coherence as C
from engine.metrics.alignment import expert_alignment
from engine.metrics.attributes import caption_quality
from engine.metrics.cca import evaluate_cub
from engine.metrics.classifiers import get_classifiers
from engine.metrics.latent import latent_accuracy
from engine.metrics.likelihood import log_likelihoods
from engine.options import add_device_arg, arg_type
from engine.registry import build_data
from engine.retrieval import retrieval_metrics
from engine.train import read_metrics
from engine.validate import nonnegative_int, positive_int

METRICS_NAME = "metrics.json"
TEST_SUBSET_SEED = 0          # the evaluated test pairs do not depend on the run, so runs compare
RETRIEVAL_PAIRS = 1000       # CUB: test images (one caption each) for the retrieval recall@k
ALIGNMENT_PAIRS = 2000       # test pairs for the expert alignment diagnostics
CAPTION_PAIRS = 500          # procedural birds: test images whose generated captions are checked


def test_subset(n_pairs: int, n: int | None) -> torch.Tensor:
    """The first ``n`` of a fixed random order of the ``n_pairs`` test pairs (all when n is None)."""
    order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(TEST_SUBSET_SEED))
    return order if n is None else order[:n]


def _cap(x: torch.Tensor, y: torch.Tensor, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if n is None or n >= len(y):
        return x, y
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(TEST_SUBSET_SEED))[:n]
    return x[keep], y[keep]


def _streamed(dataset, idx: torch.Tensor, fn, generator, progress: bool, desc: str,
              chunk: int = 5000) -> dict[str, float]:
    """Apply a fraction-valued metric ``fn(xs, labels, generator)`` to ``idx`` in chunks of pairs
    (so the whole test set never sits in memory at once) and combine the fractions by weight."""
    total: dict[str, float] = {}
    for part in tqdm(idx.split(chunk), disable=not progress, desc=desc, unit="chunk"):
        xs, labels = dataset.batch(part)
        for k, v in fn(xs, labels, generator).items():
            total[k] = total.get(k, 0.0) + v * len(part)
    return {k: v / max(len(idx), 1) for k, v in total.items()}


def evaluate_mnist_svhn(model, data, classifiers, samples: int = 10000, ll_samples: int = 1000,
                        test_pairs: int | None = 10000, ll_pairs: int = 1000, latent_max: int | None = None,
                        k_chunk: int = 50, seed: int = 0, progress: bool = True) -> dict:
    """All MNIST-SVHN metrics for ``model`` on ``data`` with ``classifiers`` (mnist_clf, svhn_clf, info).

    samples: prior samples for joint coherence and diversity; test_pairs: test pairs for cross and
    synergy coherence; ll_pairs x ll_samples: pairs and importance samples for the likelihoods
    (ll_samples = 0 skips them); latent_max: cap on the unimodal train/test items for latent accuracy.
    """
    mnist_clf, svhn_clf, clf_info = classifiers
    clfs = [mnist_clf, svhn_clf]
    names = tuple(mod.name for mod in model.mods)
    if names != ("mnist", "svhn"):
        raise ConfigError(f"evaluate_mnist_svhn needs a model over (mnist, svhn), got {names}")
    dev = model.device

    def gen() -> torch.Generator:
        return torch.Generator(device=dev).manual_seed(seed)

    latent, n_lat = {}, {"train": {}, "test": {}}
    for m, name in enumerate(names):
        train = _cap(*data.unimodal["train"][name], latent_max)
        test = _cap(*data.unimodal["test"][name], latent_max)
        latent[name] = latent_accuracy(model, m, train, test, gen(), progress=progress)
        n_lat["train"][name], n_lat["test"][name] = len(train[1]), len(test[1])

    joint = C.joint_coherence(model, clfs, samples, generator=gen(), progress=progress)
    idx = test_subset(len(data.test), test_pairs)
    cross, synergy = _streamed(data.test, idx, lambda xs, y, g: C.cross_coherence(model, clfs, xs, y, generator=g),
                               gen(), progress, "cross coherence"), None
    if not model.mixture_posterior:
        synergy = _streamed(data.test, idx, lambda xs, y, g: C.synergy_coherence(model, clfs, xs, y, generator=g),
                            gen(), progress, "synergy coherence")
    ll = None
    if ll_samples > 0:
        ll = log_likelihoods(model, data.test, idx[:ll_pairs], ll_samples, k_chunk, generator=gen(),
                             progress=progress)
    return {
        "latent_accuracy": latent,
        "joint_coherence": joint["coherence"],
        "cross_coherence": {"svhn_to_mnist": cross["svhn_to_mnist"], "mnist_to_svhn": cross["mnist_to_svhn"]},
        "synergy_coherence": synergy or {f"joint_to_{n}": None for n in names},
        "synergy_note": None if synergy is not None else C.SYNERGY_NOT_APPLICABLE,
        "log_likelihood": ll,
        "diversity": joint["counts"]["mnist"],
        "diversity_by_modality": joint["counts"],
        "classifier_accuracy": {n: clf_info[n]["test_accuracy"] for n in names},
        "n": {"joint_samples": samples, "test_pairs": len(idx), "ll_pairs": min(ll_pairs, len(idx)) if ll else 0,
              "ll_samples": ll_samples, "latent": n_lat},
    }


def evaluate(run_dir: str | Path, samples: int = 10000, ll_samples: int = 1000, device: str = "auto",
             progress: bool = True, *, test_pairs: int | None = 10000, ll_pairs: int = 1000,
             latent_max: int | None = None, k_chunk: int = 50, seed: int = 0, classifiers=None,
             data=None) -> dict:
    """Evaluate the run in ``run_dir`` and write ``metrics.json`` there; returns the metrics dict.

    ``run_dir`` may also be a checkpoint file: its metrics go beside it (``checkpoint.pt`` ->
    ``checkpoint.metrics.json``), so a run's own metrics.json is never overwritten by another
    checkpoint's. ``train`` gives the run's last step and ``weights_step``, the step of the weights
    evaluated (a run directory resolves to best.pt, often an earlier step), and the objective trained
    (``ObjectiveConfig.describe``), so runs compared side by side say how they were trained.

    ``classifiers`` (mnist_clf, svhn_clf, info) and ``data`` may be passed in to skip loading them
    (tests, the reproduce grid); by default they come from ``get_classifiers`` and the run's config.
    CUB runs call ``engine.metrics.cca.evaluate_cub`` and add ``retrieval``
    (``engine.retrieval.retrieval_metrics`` over up to RETRIEVAL_PAIRS test images) and, for the
    procedural birds, ``captions`` (``engine.metrics.attributes.caption_quality``). Every run gets
    ``alignment`` (``engine.metrics.alignment.expert_alignment`` on ALIGNMENT_PAIRS test pairs).
    """
    if samples < 1 or ll_samples < 0 or ll_pairs < 1 or (test_pairs is not None and test_pairs < 1):
        raise ConfigError("samples, ll_pairs and test_pairs must be >= 1 and ll_samples >= 0")
    t0 = time.time()
    run_dir = Path(run_dir)
    model = engine.load(run_dir, device)
    cfg = model.config
    data = data if data is not None else build_data(cfg.data)
    if cfg.data.dataset != "mnist-svhn":
        result = evaluate_cub(model, data, samples=samples, test_pairs=test_pairs, seed=seed, progress=progress)
        result["retrieval"] = retrieval_metrics(model, data, n=RETRIEVAL_PAIRS, seed=seed)
        result["captions"] = caption_quality(model, data, n=CAPTION_PAIRS, seed=seed)
    else:
        if classifiers is None:
            classifiers = get_classifiers(cfg.data, model.device, progress=progress)
        result = evaluate_mnist_svhn(model, data, classifiers, samples, ll_samples, test_pairs, ll_pairs,
                                     latent_max, k_chunk, seed, progress)
    align_idx = test_subset(len(data.test), min(ALIGNMENT_PAIRS, test_pairs or ALIGNMENT_PAIRS))
    result["alignment"] = expert_alignment(model, data.test.batch(align_idx)[0],
                                           torch.Generator(device=model.device).manual_seed(seed))
    from_file = run_dir.is_file()               # a checkpoint file rather than a run directory
    epochs = read_metrics(run_dir.parent if from_file else run_dir)
    trained = {"steps": epochs[-1]["step"] if epochs else None, "weights_step": model.trained_step,
               "seconds": round(sum(e.get("seconds", 0.0) for e in epochs), 1),
               "objective": cfg.objective.describe()}
    result = {"variant": cfg.variant, "dataset": cfg.data.dataset, "data_fraction": cfg.data.data_fraction,
              "data_sources": dict(data.sources), **result, "train": trained, "seconds": round(time.time() - t0, 1)}
    out = run_dir.with_name(f"{run_dir.stem}.{METRICS_NAME}") if from_file else run_dir / METRICS_NAME
    atomic_write_text(out, json.dumps(result, indent=2))
    return result


def read_evaluation(run_dir: str | Path) -> dict | None:
    """A run's metrics.json, or None if it has not been evaluated."""
    p = Path(run_dir) / METRICS_NAME
    return json.loads(p.read_text()) if p.is_file() else None


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def summary(m: dict) -> str:
    """A short human-readable table of a metrics dict (MNIST-SVHN keys)."""
    if "latent_accuracy" not in m:
        return json.dumps(m, indent=2)
    la, cc, sc = m["latent_accuracy"], m["cross_coherence"], m["synergy_coherence"]
    lines = [f"{m['variant']} on {m['dataset']} (fraction {m['data_fraction']})",
             f"  latent accuracy      M {_pct(la['mnist'])}  S {_pct(la['svhn'])}",
             f"  joint coherence      {_pct(m['joint_coherence'])}",
             f"  cross coherence      S->M {_pct(cc['svhn_to_mnist'])}  M->S {_pct(cc['mnist_to_svhn'])}",
             f"  synergy coherence    joint->M {_pct(sc['joint_to_mnist'])}  joint->S {_pct(sc['joint_to_svhn'])}"]
    if m.get("synergy_note"):
        lines.append(f"                       ({m['synergy_note']})")
    lines.append(f"  diversity (MNIST)    {m['diversity']}")
    if m.get("log_likelihood"):
        lines.append("  log-likelihoods      " + ", ".join(f"{k} {v:.1f}" for k, v in m["log_likelihood"].items()))
    if m.get("alignment"):
        a = m["alignment"]
        spread = ", ".join(f"{k} {v['ratio']:.3g}" for k, v in a["cross_decode_spread"].items() if v["ratio"] is not None)
        lines.append(f"  expert alignment     paired/random distance {a['distance_ratio']:.3g} (1: unaligned); "
                     f"cross/own decode spread {spread} (0: ignores the latent)")
    ca = m["classifier_accuracy"]
    lines.append(f"  classifiers          MNIST {_pct(ca['mnist'])}  SVHN {_pct(ca['svhn'])} test accuracy")
    return "\n".join(lines)


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="paper metrics for a trained run -> RUN_DIR/metrics.json "
                       "(a checkpoint file FILE.pt -> FILE.metrics.json beside it)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON (default: a summary)")
    p.add_argument("--samples", type=arg_type(positive_int), default=10000, help="prior samples for joint coherence (10000)")
    p.add_argument("--ll-samples", type=arg_type(nonnegative_int), default=1000,
                   help="importance samples per likelihood (1000; 0 skips likelihoods)")
    p.add_argument("--test-pairs", type=arg_type(positive_int), default=10000, help="test pairs for cross/synergy coherence")
    p.add_argument("--ll-pairs", type=arg_type(positive_int), default=1000, help="test pairs for the likelihoods (1000)")
    p.add_argument("--latent-max", type=arg_type(positive_int), default=None, help="cap on items for latent accuracy")
    p.add_argument("--k-chunk", type=arg_type(positive_int), default=50, help="importance samples per chunk (memory bound)")
    p.add_argument("--seed", type=int, default=0)
    add_device_arg(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_evaluate)


def run_evaluate(a: argparse.Namespace) -> int:
    m = evaluate(a.run_dir, a.samples, a.ll_samples, a.device, not a.no_progress, test_pairs=a.test_pairs,
                 ll_pairs=a.ll_pairs, latent_max=a.latent_max, k_chunk=a.k_chunk, seed=a.seed)
    print(json.dumps(m, indent=2) if a.json else summary(m))
    return 0


__all__ = ["evaluate", "evaluate_mnist_svhn", "read_evaluation", "summary", "test_subset", "METRICS_NAME"]
