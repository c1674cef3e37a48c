"""Reproduce the paper's MNIST-SVHN results: Table 1, Figure 6 and the gamma ablation (Figure 11).

``python -m engine reproduce --preset {paper,cpu} [--models ...] [--fractions 1.0 0.2] [--seeds 0 1]
[--ablation] [--gammas ...] [--workers W] [--out reports/NAME]`` trains (engine.train.train) and evaluates
(engine.evaluate.evaluate) every cell of the grid, then writes into OUT:

- ``report.md``: header (git commit, machine, wall time, preset and what it cuts), Table 1, the paper's
  findings checked on it, ablation table; ``invocations.jsonl`` records each sitting's wall time;
- ``table1.csv``: mean and std over seeds per fraction x variant and metric (percent), and the paper's
  number (``<metric> paper``, PAPER_TABLE1; report.md shows it in parentheses after ours);
- ``figure6.html``: metrics against data fraction (plotly, offline: ``plotly.min.js`` beside it, shared by
  the figures; ``figure6.png`` too if kaleido is installed; ``redraw_figures`` redraws them from the CSVs);
- ``ablation.csv`` and ``figure11.html`` (with ``--ablation``): cI-MMVAE metrics against gamma.

Runs live in ``OUT/runs/<variant>-f<fraction>-s<seed>[-g<gamma>]``. The grid is resumable: a cell whose
run directory holds metrics.json is skipped, a half-trained run is resumed (resume=True).
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from engine.config import DataConfig, RunConfig, preset_settings, resolve
from engine.device import pick_device
from engine.errors import ConfigError, Diverged
from engine.evaluate import METRICS_NAME, evaluate, read_evaluation
from engine.metrics.classifiers import get_classifiers
from engine.options import add_device_arg, add_setting_flags, arg_type
from engine.provenance import git_commit, machine
from engine.registry import VARIANTS, build_data, model_class, parse_variant, variant_name
from engine.train import read_metrics, train
from engine.validate import fraction, gamma_value

# (key in metrics.json, sub-key, Table 1 column header)
COLUMNS = [("latent_accuracy", "mnist", "Latent acc. M"), ("latent_accuracy", "svhn", "Latent acc. S"),
           ("joint_coherence", None, "Joint coherence"),
           ("cross_coherence", "svhn_to_mnist", "Cross S→M"), ("cross_coherence", "mnist_to_svhn", "Cross M→S"),
           ("synergy_coherence", "joint_to_mnist", "Synergy joint→M"),
           ("synergy_coherence", "joint_to_svhn", "Synergy joint→S")]
# The paper's Table 1 (Shi et al., ICLR 2021, means over 5 runs, full settings: K = 30, 30 partners per
# digit, GPU): (fraction, variant) -> Table 1 column -> percent; None where the paper has none ("—").
PAPER_TABLE1: dict[tuple[float, str], dict[str, float | None]] = {
    key: dict(zip([h for _, _, h in COLUMNS], vals)) for key, vals in {
    # latent acc. M, latent acc. S, joint coherence, cross S→M, cross M→S, synergy joint→M, synergy joint→S
    (1.0, "MMVAE"): (92.48, 79.03, 42.32, 70.77, 85.50, None, None),
    (1.0, "cI-MMVAE"): (93.97, 81.87, 43.94, 79.66, 92.67, None, None),
    (1.0, "cC-MMVAE"): (93.10, 80.88, 45.46, 79.34, 92.35, None, None),
    (1.0, "MVAE"): (91.65, 64.12, 9.42, 10.98, 21.88, 64.60, 52.91),
    (1.0, "cI-MVAE"): (96.97, 75.94, 15.23, 10.85, 27.70, 85.07, 75.67),
    (1.0, "cC-MVAE"): (97.42, 81.07, 8.85, 12.83, 30.03, 75.25, 69.42),
    (1.0, "JMVAE"): (84.45, 57.98, 42.18, 49.63, 54.98, 85.77, 68.15),
    (1.0, "cI-JMVAE"): (84.58, 64.42, 48.95, 58.16, 70.61, 93.45, 84.00),
    (1.0, "cC-JMVAE"): (83.67, 66.64, 47.27, 59.73, 69.49, 91.21, 84.07),
    (0.2, "MMVAE"): (88.54, 68.90, 37.71, 59.52, 76.33, None, None),
    (0.2, "cI-MMVAE"): (91.64, 73.02, 42.74, 69.51, 86.75, None, None),
    (0.2, "cC-MMVAE"): (92.10, 71.29, 40.77, 68.43, 86.24, None, None),
    (0.2, "MVAE"): (90.29, 33.44, 10.88, 8.72, 12.12, 42.10, 44.95),
    (0.2, "cI-MVAE"): (93.72, 56.74, 12.79, 14.18, 20.23, 75.36, 64.81),
    (0.2, "cC-MVAE"): (92.74, 52.99, 17.95, 14.70, 24.90, 56.86, 54.28),
    (0.2, "JMVAE"): (77.53, 52.55, 26.37, 42.58, 41.44, 85.07, 51.95),
    (0.2, "cI-JMVAE"): (77.57, 57.91, 32.58, 51.85, 47.92, 92.54, 67.01),
    (0.2, "cC-JMVAE"): (81.11, 57.85, 34.00, 50.73, 56.89, 88.36, 68.49)}.items()}
ABLATION_GAMMAS = (1.0, 1.1, 2.0, 5.0, 10.0, math.inf)
ABLATION_VARIANT = "cI-MMVAE"


@dataclass
class Preset:
    """A grid, the run settings of every cell (a partial config: engine.config.PRESETS) and the
    evaluation sizes."""

    name: str
    notes: str
    models: tuple[str, ...] = VARIANTS
    fractions: tuple[float, ...] = (1.0, 0.2)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    gammas: tuple[float, ...] = ABLATION_GAMMAS
    ablation_fraction: float = 1.0
    settings: dict = field(default_factory=dict)      # dotted setting -> value, over the schema's defaults
    eval: dict = field(default_factory=lambda: {"samples": 10000, "ll_samples": 1000, "test_pairs": None,
                                                "ll_pairs": 1000, "latent_max": None})

    @property
    def config(self) -> RunConfig:
        """The run settings every cell shares (MNIST-SVHN, the schema's defaults under ``settings``)."""
        return resolve(self.settings, dataset="mnist-svhn")

    @property
    def gamma(self) -> float:
        return self.config.objective.gamma

    def run_config(self, variant: str, fraction: float, seed: int, gamma: float, source: str = "offline",
                   root: str | None = None, download: bool = False, device: str = "auto") -> RunConfig:
        return resolve(self.settings, {"variant": variant, "data.source": source, "data.root": root,
                                       "data.download": download, "data.data_fraction": fraction,
                                       "data.seed": seed, "train.seed": seed, "train.device": device,
                                       "objective.gamma": gamma}, dataset="mnist-svhn")

    @classmethod
    def named(cls, name: str, notes: str, **grid) -> "Preset":
        """The preset whose run settings are engine.config.PRESETS["reproduce-<name>"]."""
        return cls(name, notes, settings=preset_settings(f"reproduce-{name}"), **grid)


def paper_preset() -> Preset:
    """Paper settings (§4, Appendix F), for a GPU: K = 30 importance samples, N = 5 negatives, gamma = 2,
    latent dimension 20, dm = 30 partners per digit, batch 128, Adam lr 1e-3 (amsgrad), 30 epochs (the
    paper gives no epoch count; 30 is Shi et al. 2019's MNIST-SVHN setting), 5 seeds, fractions 100% and
    20%. Evaluation: 10,000 prior samples, the whole paired test set for cross/synergy coherence, the
    whole unimodal sets for latent accuracy, and 1,000 test pairs x 1,000 importance samples for the
    likelihoods. Not reproduced: DReG gradients and the learnt prior scale of Shi et al. 2019's runs."""
    return Preset.named("paper", paper_preset.__doc__)


def cpu_preset() -> Preset:
    """Sized for a 2-core CPU (two workers): the 100%/20% x nine-variant grid with one seed (18 runs) in
    about two hours with two workers (the cI-/cC-MVAE cells cost most: they decode every negative pair's
    joint posterior anew), ~3,000 optimiser steps of batch 32 per run in bf16 (the shipped recipe's precision), MMVAE
    variants with the looser bound (the engine's default, Shi et al. 2019's setting). Cuts
    against the paper preset: K = 30 -> 2 importance samples (the fewest at which CUBO and IWAE differ),
    N = 5 -> 2 negatives, dm = 30 -> 5 partners per digit, batch 128 -> 32, 30 epochs -> 3000 optimiser
    steps, seeds 5 -> 1 (add --seeds 0 1 for a spread, twice the time); evaluation on 2,000 prior samples
    (not 10,000), 2,000 test pairs for cross/synergy coherence (not all), latent accuracy on at most
    5,000 items per set, and no log-likelihoods. Added: the learnt prior scale (Shi et al. 2019) — with a
    fixed prior and this budget the SVHN posterior stays at chance. Why not fewer steps and more seeds:
    measured on MMVAE, SVHN latent accuracy is 12.7% (chance) after 1,250 steps and 56.6% after 3,000.
    Latent dimension 20, gamma = 2 and lr 1e-3 are kept (lr 2e-3 measured worse: 46.0% at 3,000 steps).
    Numbers are far below the paper's; compare variants, not magnitudes."""
    return Preset.named("cpu", cpu_preset.__doc__, seeds=(0,),
                        eval={"samples": 2000, "ll_samples": 0, "test_pairs": 2000, "ll_pairs": 1, "latent_max": 5000})


PRESETS: dict[str, Callable[[], Preset]] = {"paper": paper_preset, "cpu": cpu_preset}


@dataclass(frozen=True)
class Cell:
    variant: str
    fraction: float
    seed: int
    gamma: float

    def dirname(self, preset_gamma: float) -> str:
        g = "" if self.gamma == preset_gamma else f"-g{'inf' if math.isinf(self.gamma) else f'{self.gamma:g}'}"
        return f"{self.variant}-f{self.fraction:g}-s{self.seed}{g}"


def cost_rank(cell: Cell, preset: Preset) -> int:
    """Relative cost of a cell's training step: the contrastive term of a single joint posterior (MVAE,
    JMVAE) encodes and decodes N extra pairs per pair, a mixture's (MMVAE) reuses its cross-decodes
    (measured in bench/train_step.py)."""
    family, contrastive = parse_variant(cell.variant)
    reuses = model_class(family).mixture_posterior
    return 1 + preset.config.objective.N if contrastive and not reuses and not math.isinf(cell.gamma) else 1


def grid(preset: Preset, ablation: bool) -> tuple[list[Cell], list[Cell]]:
    """Main cells (fraction x variant x seed) and ablation cells (gamma x seed), in run order."""
    main = [Cell(variant_name(*parse_variant(v)), f, s, preset.gamma)
            for f in preset.fractions for v in preset.models for s in preset.seeds]
    abl = [Cell(ABLATION_VARIANT, preset.ablation_fraction, s, g) for g in preset.gammas for s in preset.seeds]
    return main, (abl if ablation else [])


def split_done(preset: Preset, cells: list[Cell], out: Path) -> tuple[dict[Cell, dict], list[tuple[Cell, Path]]]:
    """The metrics of the cells already evaluated, and (cell, run dir) of those still to run, in order."""
    done, todo = {}, []
    for cell in cells:
        run_dir = out / "runs" / cell.dirname(preset.gamma)
        if (run_dir / METRICS_NAME).is_file():
            done[cell] = read_evaluation(run_dir)
        else:
            todo.append((cell, run_dir))
    return done, todo


def run_cell(preset: Preset, cell: Cell, run_dir: Path, classifiers, data_cache: dict, source: str,
             root: str | None, download: bool, device: str, progress: bool) -> dict:
    """Train (or resume a half-trained run) and evaluate one cell; its metrics."""
    cfg = preset.run_config(cell.variant, cell.fraction, cell.seed, cell.gamma, source, root, download, device)
    key = (cell.fraction, cell.seed)
    if key not in data_cache:
        data_cache.clear()             # cells are ordered so one data set is live at a time
        data_cache[key] = build_data(cfg.data)
    data = data_cache[key]
    try:
        train(cfg, run_dir, resume=(run_dir / "checkpoint.pt").is_file(), progress=progress, data=data)
    except Diverged:
        pass                           # evaluated from its best.pt; the report lists it under Table 1
    e = preset.eval
    return evaluate(run_dir, e["samples"], e["ll_samples"], device, progress, test_pairs=e["test_pairs"],
                    ll_pairs=e["ll_pairs"], latent_max=e["latent_max"], classifiers=classifiers, data=data)


def _value(m: dict, key: str, sub: str | None) -> float | None:
    v = m.get(key)
    if sub is not None:
        v = None if v is None else v.get(sub)
    return None if v is None else 100.0 * float(v)


def aggregate(results: list[tuple[Cell, dict]], by: Callable[[Cell], tuple]) -> list[dict]:
    """Mean and std (over seeds, ddof=1; 0 for one seed) of every Table 1 column per group key."""
    groups: dict[tuple, list[dict]] = {}
    for cell, m in results:
        groups.setdefault(by(cell), []).append(m)
    rows = []
    for key, ms in groups.items():
        row = {"key": key, "n_seeds": len(ms)}
        for k, sub, head in COLUMNS:
            vals = [v for v in (_value(m, k, sub) for m in ms) if v is not None]
            row[head] = (float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0) if vals else None
        rows.append(row)
    return rows


def _fmt(v, n_seeds: int) -> str:
    """Mean (±std) over seeds; the mean alone for one seed, whose spread is unknown, not zero."""
    if v is None:
        return "—"
    return f"{v[0]:.2f}" if n_seeds < 2 else f"{v[0]:.2f} (±{v[1]:.2f})"


def key_text(k) -> str:
    """A group key for display: fractions as percent, gamma inf as 'inf'."""
    if isinstance(k, str):
        return k
    return "inf" if math.isinf(k) else f"{k:g}"


def paper_row(key: tuple) -> dict[str, float | None]:
    """The paper's Table 1 row (column -> percent) for a (fraction, variant) key; {} where it has none
    (another fraction, or a key that is not a Table 1 row)."""
    if len(key) != 2 or isinstance(key[0], str):
        return {}
    return PAPER_TABLE1.get((round(float(key[0]), 6), key[1]), {})


def _with_paper(text: str, paper: float | None) -> str:
    """A cell as ``ours (paper)``; ours alone where the paper has no number."""
    return text if paper is None else f"{text} ({paper:.2f})"


def markdown_table(rows: list[dict], key_names: list[str], key_fmt: Callable[[tuple], list[str]],
                   paper: Callable[[tuple], dict] | None = None) -> str:
    """Markdown of ``rows``; with ``paper`` (key -> column -> percent, e.g. paper_row) each cell also
    shows the paper's number in parentheses after ours."""
    heads = [h for _, _, h in COLUMNS]
    lines = ["| " + " | ".join(key_names + ["seeds"] + heads) + " |",
             "|" + "---|" * (len(key_names) + 1 + len(heads))]
    for r in rows:
        ref = paper(r["key"]) if paper else {}
        cells = [_with_paper(_fmt(r[h], r["n_seeds"]), ref.get(h)) for h in heads]
        lines.append("| " + " | ".join(key_fmt(r["key"]) + [str(r["n_seeds"])] + cells) + " |")
    return "\n".join(lines)


def csv_text(rows: list[dict], key_names: list[str], paper: Callable[[tuple], dict] | None = None) -> str:
    """CSV of ``rows``: keys, n_seeds, mean and std per column; with ``paper`` (as for markdown_table)
    a ``<column> paper`` column per Table 1 column after those (empty where the paper has none)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    heads = [h for _, _, h in COLUMNS]
    w.writerow(key_names + ["n_seeds"] + [f"{h} {s}" for h in heads for s in ("mean", "std")]
               + ([f"{h} paper" for h in heads] if paper else []))
    for r in rows:
        vals = [x for h in heads for x in ((round(r[h][0], 4), round(r[h][1], 4) if r["n_seeds"] > 1 else "")
                                           if r[h] is not None else ("", ""))]
        ref = paper(r["key"]) if paper else None
        extra = [] if ref is None else ["" if ref.get(h) is None else ref[h] for h in heads]
        w.writerow([key_text(k) for k in r["key"]] + [r["n_seeds"]] + vals + extra)
    return buf.getvalue()


def figure(rows: list[dict], x_of: Callable[[tuple], object], line_of: Callable[[tuple], str], x_title: str,
           title: str, baseline: dict | None = None):
    """Plotly figure: one panel per Table 1 column (synergy omitted), one line per group, ±std bars."""
    # plotly is a dashboard dependency (and ~80 ms on every CLI call, which imports this module): the figures only
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    heads = [h for k, _, h in COLUMNS if k != "synergy_coherence"]
    fig = make_subplots(rows=1, cols=len(heads), subplot_titles=heads)
    lines = sorted({line_of(r["key"]) for r in rows})
    for li, name in enumerate(lines):
        rs = [r for r in rows if line_of(r["key"]) == name]
        for c, h in enumerate(heads, 1):
            pts = [(x_of(r["key"]), r[h]) for r in rs if r[h] is not None]
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1][0] for p in pts], name=name, legendgroup=name,
                                     showlegend=c == 1, mode="lines+markers",
                                     error_y={"type": "data", "array": [p[1][1] for p in pts]}), row=1, col=c)
            if baseline and baseline.get(h) is not None:
                fig.add_hline(y=baseline[h][0], line_dash="dot", row=1, col=c)
    fig.update_layout(title=title, height=380, width=300 * len(heads))
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text="%", col=1)
    return fig


def rows_from_csv(text: str, n_keys: int) -> list[dict]:
    """The rows ``csv_text`` wrote, back (keys as numbers where they read as numbers), so the
    figures can be redrawn from a committed table without its runs."""
    def key(v: str):
        try:
            return float(v)
        except ValueError:
            return v

    heads = [h for _, _, h in COLUMNS]
    rows = []
    for rec in list(csv.reader(io.StringIO(text)))[1:]:
        vals = rec[n_keys + 1:]
        row = {"key": tuple(key(v) for v in rec[:n_keys]), "n_seeds": int(rec[n_keys])}
        for i, h in enumerate(heads):
            mean, std = vals[2 * i], vals[2 * i + 1]
            row[h] = (float(mean), float(std or 0.0)) if mean != "" else None
        rows.append(row)
    return rows


def redraw_figures(out: Path, ablation_fraction: float) -> list[Path]:
    """figure6 (and figure11, where ablation.csv is there) redrawn from the report's CSVs: no training,
    no evaluation; ``ablation_fraction`` picks Figure 11's dotted MMVAE baseline from Table 1."""
    out = Path(out)
    rows = rows_from_csv((out / "table1.csv").read_text(), 2)
    files = _write_figure(figure(rows, lambda k: 100 * k[0], lambda k: k[1], "data used (%)",
                                 "Figure 6: metrics against data fraction"), out / "figure6")
    if (out / "ablation.csv").exists():
        arows = sorted(rows_from_csv((out / "ablation.csv").read_text(), 1), key=lambda r: r["key"][0])
        base = [r for r in rows if r["key"] == (ablation_fraction, "MMVAE")]
        files += _write_figure(figure(arows, lambda k: key_text(k[0]), lambda k: ABLATION_VARIANT, "gamma",
                                      f"Figure 11: {ABLATION_VARIANT} against gamma (dotted: MMVAE)",
                                      base[0] if base else None), out / "figure11")
    return files


def _write_figure(fig, path: Path) -> list[Path]:
    """HTML that works offline: plotly.js is one shared plotly.min.js beside the reports (written
    once, ~4.6 MB, instead of a CDN link or a copy inside every file); PNG too where kaleido is installed."""
    fig.write_html(str(path.with_suffix(".html")), include_plotlyjs="directory")
    out = [path.with_suffix(".html"), path.parent / "plotly.min.js"]
    if importlib.util.find_spec("kaleido") is not None:
        fig.write_image(str(path.with_suffix(".png")))
        out.append(path.with_suffix(".png"))
    return out


def _cell_seconds(results: list[tuple[Cell, dict]]) -> float:
    """Training plus evaluation seconds recorded in the cells' metrics (each cell counted once)."""
    seen = {c: m for c, m in results}
    return sum(m.get("seconds", 0.0) + m.get("train", {}).get("seconds", 0.0) for m in seen.values())


INVOCATIONS = "invocations.jsonl"
CHANCE = 10.0          # % coherence / latent accuracy of a guess among ten digits
CROSS = ("Cross S→M", "Cross M→S")


def log_invocation(out: Path, wall: float, ran: int, skipped: int, workers: int) -> None:
    """Append this invocation (commit, wall time, cells run) to OUT/invocations.jsonl, so a grid run
    over several sittings reports its whole wall time."""
    rec = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": git_commit(out), "wall_seconds": round(wall, 1),
           "cells_run": ran, "cells_skipped": skipped, "workers": workers}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / INVOCATIONS, "a") as f:
        f.write(json.dumps(rec) + "\n")


def read_invocations(out: Path) -> list[dict]:
    path = out / INVOCATIONS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _verdict(base: tuple[float, float], others: dict[str, tuple[float, float]], n: int | None,
             match: bool = False) -> str:
    """Do the contrastive variants beat (``match``: match or beat) the baseline on one metric (percent)?
    Better or worse only beyond two standard errors of the difference of two proportions measured on
    ``n`` items (no noise rule when n is None)."""
    def sign(a: float, b: float) -> int:
        se = 0.0 if n is None else 100 * math.sqrt((a / 100 * (1 - a / 100) + b / 100 * (1 - b / 100)) / n)
        return 0 if abs(a - b) <= 2 * se else (1 if a > b else -1)

    if all(abs(v[0] - CHANCE) <= 2.0 for v in [base, *others.values()]):
        return "not informative: all at chance"
    signs = {name: sign(v[0], base[0]) for name, v in others.items()}
    ok = [k for k, v in signs.items() if v > 0 or (match and v == 0)]
    if len(ok) == len(signs):
        return "holds"
    if ok:
        return f"holds for {', '.join(ok)} only"
    return "does not hold (" + ("worse" if any(v < 0 for v in signs.values()) else "within noise") + ")"


def findings(rows: list[dict], n: int | None) -> list[str]:
    """The paper's Table 1 claims checked on this table, as Markdown: (1) the contrastive variants beat
    their baseline on cross coherence at each data fraction; (2) contrastive variants on the smallest
    fraction match or beat the baseline on all the data (better, or within noise, counts as a match)."""
    by = {r["key"]: r for r in rows}
    fractions = sorted({k[0] for k in by}, reverse=True)
    fams = [f for f in ("MMVAE", "MVAE", "JMVAE") if any((fr, f) in by for fr in fractions)]
    claims = [(f"contrastive > baseline, {100 * fr:g}% data", fr, fr, False) for fr in fractions]
    if len(fractions) > 1:
        hi, lo = fractions[0], fractions[-1]
        claims.append((f"contrastive on {100 * lo:g}% ≥ baseline on {100 * hi:g}%", hi, lo, True))
    fmt = lambda v: "—" if v is None else f"{v[0]:.1f}"   # noqa: E731
    lines = ["| claim | model | metric | baseline | cI- | cC- | verdict |", "|---|---|---|---:|---:|---:|---|"]
    for claim, base_fr, fr, match in claims:
        for fam in fams:
            base = by.get((base_fr, fam))
            for head in CROSS:
                others = {p + fam: by[(fr, p + fam)][head] for p in ("cI-", "cC-")
                          if (fr, p + fam) in by and by[(fr, p + fam)][head] is not None}
                if base is not None and base[head] is not None and others:
                    lines.append(f"| {claim} | {fam} | {head} | {fmt(base[head])} | {fmt(others.get('cI-' + fam))} | "
                                 f"{fmt(others.get('cC-' + fam))} | {_verdict(base[head], others, n, match)} |")
    return lines


def diverged(curve: list[dict]) -> tuple[float, float] | None:
    """(best, last) held-out IWAE of a run whose last value is more than twice as bad as its best, else
    None. Such a run's losses exploded while staying finite, which the non-finite guard of training
    does not catch."""
    vals = [r["test_iwae"] for r in curve if r.get("test_iwae") is not None]
    finite = [v for v in vals[:-1] if math.isfinite(v)]
    if not finite:
        return None
    best, last = max(finite + vals[-1:]), vals[-1]
    return (best, last) if not math.isfinite(last) or last < best - abs(best) else None


def _invocation_lines(invs: list[dict]) -> list[str]:
    """Header lines for the recorded invocations that ran cells: their wall times and commits."""
    ran = [i for i in invs if i.get("cells_run")]
    if not ran:
        return []
    lines = [f"- wall time of the whole grid: {sum(i['wall_seconds'] for i in ran):.0f} s over {len(ran)} "
             f"invocation(s) that ran cells ({INVOCATIONS}):"]
    for i in ran:
        note = f"; {i['note']}" if i.get("note") else ""
        lines.append(f"  - {i['finished']}: {i['wall_seconds']:.0f} s, {i['cells_run']} cells, {i['workers']} "
                     f"worker(s), commit {i['commit']}{note}")
    return lines


def write_report(out: Path, preset: Preset, main: list[tuple[Cell, dict]], abl: list[tuple[Cell, dict]],
                 wall: float, ran: int, skipped: int, classifier_acc: dict | None,
                 diverged_runs: dict[str, tuple[float, float]] | None = None, device: str = "auto") -> dict[str, Path]:
    """Write report.md, table1.csv, figure6.html and (with ablation cells) ablation.csv, figure11.html.
    ``diverged_runs`` (run name -> best, last held-out IWAE) are listed under Table 1; ``device`` is
    the one the header's machine line names."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    rows = aggregate(main, lambda c: (c.fraction, c.variant))
    keys = ["Data", "Methods"]
    (out / "table1.csv").write_text(csv_text(rows, ["fraction", "variant"], paper_row))
    files["table1.csv"] = out / "table1.csv"
    if rows:
        fig = figure(rows, lambda k: 100 * k[0], lambda k: k[1], "data used (%)", "Figure 6: metrics against data fraction")
        for p in _write_figure(fig, out / "figure6"):
            files[p.name] = p
    e, c = preset.eval, preset.config
    header = [f"# Reproduction report: preset `{preset.name}`", "",
              f"- git commit: {git_commit(out)}", f"- machine: {machine(device)}",
              f"- wall time of this invocation: {wall:.0f} s ({ran} cells run, {skipped} already done); "
              f"compute of all cells: {_cell_seconds(main + abl):.0f} s (training + evaluation)",
              *_invocation_lines(read_invocations(out)),
              f"- grid: models {', '.join(preset.models)}; fractions {', '.join(f'{f:g}' for f in preset.fractions)}; "
              f"seeds {', '.join(map(str, preset.seeds))}",
              f"- training: K={c.objective.K}, N={c.objective.N}, gamma={c.objective.gamma:g}, latent dim "
              f"{c.model.latent_dim}, learnt prior scale {'on' if c.model.learn_prior else 'off'}, "
              f"dm={c.data.dm}, batch {c.train.batch_size}, lr {c.train.lr:g}, epochs {c.train.epochs}, "
              f"max steps {c.train.max_steps}",
              f"- evaluation: {json.dumps(e)}"]
    if classifier_acc:
        header.append("- digit classifiers (test accuracy): "
                      + ", ".join(f"{k} {100 * v:.2f}%" for k, v in classifier_acc.items()))
    header += ["", f"Preset notes: {' '.join(preset.notes.split())}", "",
               "## Table 1: MNIST(M)-SVHN(S), mean (±std) over seeds (the mean alone for one seed), %", "",
               markdown_table(rows, keys, lambda k: [f"{100 * k[0]:g}%", k[1]], paper_row), "",
               "— : not applicable (synergy coherence of MMVAE variants, paper §4.3).", "",
               "(x) after a cell: the paper's number (its Table 1: mean over 5 runs at the paper's full "
               "settings, K=30, N=5, 30 partners per digit, on a GPU), a reference for scale, not a target "
               "for a cut-down grid; a cell the paper has no number for shows ours alone.", "",
               "Figure 6: [figure6.html](figure6.html)", "",
               *(["Diverged runs (last held-out IWAE more than twice as bad as the best; their numbers are "
                  "in the tables as they are): " + "; ".join(f"{k} (best {b:,.0f}, last {la:.3g})"
                                                           for k, (b, la) in sorted(diverged_runs.items())), ""]
                 if diverged_runs else []),
               "## The paper's findings on this grid", "",
               "Computed from Table 1 (percent). Better or worse means beyond two standard errors of the "
               + (f"difference of two proportions on {e['test_pairs']} test pairs"
                  if e.get("test_pairs") else "difference (none: the whole test set)")
               + "; with one seed the spread over seeds is not in it. Chance is 10%.", "",
               *findings(rows, e.get("test_pairs"))]
    if abl:
        arows = sorted(aggregate(abl, lambda c: (c.gamma,)), key=lambda r: r["key"][0])
        base = [r for r in aggregate([(c, m) for c, m in main if c.variant == "MMVAE"
                                      and c.fraction == preset.ablation_fraction], lambda c: (c.variant,))]
        (out / "ablation.csv").write_text(csv_text(arows, ["gamma"]))
        files["ablation.csv"] = out / "ablation.csv"
        fig = figure(arows, lambda k: key_text(k[0]), lambda k: ABLATION_VARIANT,
                     "gamma", f"Figure 11: {ABLATION_VARIANT} against gamma (dotted: MMVAE)",
                     base[0] if base else None)
        for p in _write_figure(fig, out / "figure11"):
            files[p.name] = p
        header += ["", f"## Gamma ablation (Figure 11): {ABLATION_VARIANT}, {100 * preset.ablation_fraction:g}% data",
                   "", markdown_table(arows, ["gamma"], lambda k: [key_text(k[0])]), "", "Figure 11: [figure11.html](figure11.html)"]
    (out / "report.md").write_text("\n".join(header) + "\n")
    files["report.md"] = out / "report.md"
    return files


_WORKER: dict = {}


def _init_worker(threads: int, classifiers) -> None:
    """Pool worker: an equal share of the CPU threads, the classifiers, and its own data cache."""
    torch.set_num_threads(threads)
    _WORKER.update(classifiers=classifiers, data={})


def _worker_cell(preset: Preset, cell: Cell, run_dir: Path, source: str, root: str | None, download: bool,
                 device: str) -> dict:
    return run_cell(preset, cell, run_dir, _WORKER["classifiers"], _WORKER["data"], source, root, download,
                    device, False)


def _run_parallel(preset: Preset, todo: list[tuple[Cell, Path]], classifiers, source: str, root: str | None,
                  download: bool, device: str, progress: bool, workers: int) -> dict[Cell, dict]:
    """Run the cells of ``todo`` in ``workers`` processes; a failed cell does not stop the others, and the
    failures are raised together once every other cell has finished (their results are kept on disk)."""
    todo = sorted(todo, key=lambda t: -cost_rank(t[0], preset))   # longest first: the workers finish together
    done, failed = {}, []
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads, classifiers)) as pool:
        futures = {pool.submit(_worker_cell, preset, cell, run_dir, source, root, download, device): cell
                   for cell, run_dir in todo}
        for fut in tqdm(as_completed(futures), total=len(futures), disable=not progress,
                        desc=f"reproduce {preset.name} ({workers} workers)", unit="run"):
            try:
                done[futures[fut]] = fut.result()
            except Exception as exc:  # noqa: BLE001 - reported below with the cell's name
                failed.append(f"{futures[fut].dirname(preset.gamma)}: {type(exc).__name__}: {exc}")
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(todo)} cells failed (the others are saved; rerun to retry "
                           "only these): " + "; ".join(failed))
    return done


def reproduce(preset: Preset, out: str | Path, ablation: bool = False, source: str = "offline",
              root: str | None = None, download: bool = False, device: str = "auto",
              progress: bool = True, classifiers=None, workers: int = 1) -> dict[str, Path]:
    """Train and evaluate the grid of ``preset`` into ``out``/runs and write the report files.

    ``classifiers`` (mnist_clf, svhn_clf, info) may be passed in; by default get_classifiers loads them.
    ``workers`` > 1 runs that many cells at once in separate processes, each with an equal share of the
    CPU threads (on a 2-core CPU two single-thread cells finish sooner than one two-thread cell).
    Returns the written files by name.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")

    t0 = time.time()
    out = Path(out)
    main, abl = grid(preset, ablation)
    if classifiers is None:
        classifiers = get_classifiers(DataConfig(source=source, root=root, download=download),
                                      pick_device(device), progress)
    cells = list(dict.fromkeys(main + abl))
    done, todo = split_done(preset, cells, out)
    ran, skipped = len(todo), len(done)
    if workers <= 1:
        data_cache: dict = {}
        for cell, run_dir in tqdm(todo, disable=not progress, desc=f"reproduce {preset.name}", unit="run"):
            done[cell] = run_cell(preset, cell, run_dir, classifiers, data_cache, source, root, download,
                                  device, progress)
    elif todo:
        done.update(_run_parallel(preset, todo, classifiers, source, root, download, device, progress, workers))
    acc = {k: v["test_accuracy"] for k, v in classifiers[2].items()}
    wall = time.time() - t0
    if ran:
        log_invocation(out, wall, ran, skipped, workers)

    bad = {c.dirname(preset.gamma): d for c in cells
           if (d := diverged(read_metrics(out / "runs" / c.dirname(preset.gamma)))) is not None}
    return write_report(out, preset, [(c, done[c]) for c in main], [(c, done[c]) for c in abl],
                        wall, ran, skipped, acc, bad, device)


def add_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="train + evaluate the Table 1 grid and write a report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True, choices=tuple(PRESETS),
                   help="paper: the paper's settings (GPU); cpu: a cut-down grid for a 2-core CPU (~2 h)")
    p.add_argument("--models", nargs="+", default=None, help=f"variants (default all nine: {', '.join(VARIANTS)})")
    p.add_argument("--fractions", nargs="+", type=arg_type(fraction), default=None, help="data fractions (default 1.0 0.2)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: the preset's)")
    p.add_argument("--ablation", action="store_true", help=f"also run the gamma ablation of {ABLATION_VARIANT}")
    p.add_argument("--gammas", nargs="+", type=arg_type(gamma_value), default=None,
                   help="ablation gammas (default 1 1.1 2 5 10 inf); implies --ablation")
    p.add_argument("--max-steps", type=int, default=None, help="override the preset's optimiser steps per run")
    add_setting_flags(p, ("data.source", "data.root", "data.download"))
    add_device_arg(p)
    p.add_argument("--workers", type=int, default=1,
                   help="cells trained at once, in separate processes sharing the CPU threads (default 1)")
    p.add_argument("--out", default=None, help="report folder (default reports/<preset>)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_reproduce)


def preset_from_args(a: argparse.Namespace) -> Preset:
    preset = PRESETS[a.preset]()
    changes = {}
    if a.models:
        changes["models"] = tuple(variant_name(*parse_variant(m)) for m in a.models)
    if a.fractions:
        changes["fractions"] = tuple(a.fractions)
    if a.seeds:
        changes["seeds"] = tuple(a.seeds)
    if a.gammas:
        changes["gammas"] = tuple(a.gammas)
    if a.max_steps is not None:
        if a.max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {a.max_steps}")
        changes["settings"] = {**preset.settings, "train.max_steps": a.max_steps}
    return replace(preset, **changes)


def run_reproduce(a: argparse.Namespace) -> int:
    preset = preset_from_args(a)
    files = reproduce(preset, a.out or f"reports/{preset.name}", a.ablation or bool(a.gammas), a.source,
                      a.data_root, a.download, a.device, not a.no_progress, workers=a.workers)
    print((Path(files["report.md"])).read_text())
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0


__all__ = ["Preset", "PRESETS", "PAPER_TABLE1", "paper_preset", "cpu_preset", "reproduce", "grid", "aggregate", "write_report"]
