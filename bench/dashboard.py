"""Dashboard speed: cold start to a rendered page, and the server work of one threshold change.

    python -m bench.dashboard [--checkpoints checkpoints] [--changes 20]

(a) Cold start, per page: a fresh ``streamlit run streamlit_app.py`` (headless, free port, CMVAE_CHECKPOINTS
    = --checkpoints, an empty runs root) is started while headless Chromium waits; the page is opened as soon
    as /_stcore/health answers, and the clock (from the process start) stops when the script run has
    finished and its main content is visible: Models: the K/N/gamma metrics and a training-curve chart (or the "no curve yet" note);
    Relatedness: the precision/recall/F1/accuracy metrics and the PMI histogram, or the "Compute PMI" form
    where no run has saved PMI arrays. Works with whatever checkpoints exist (none included).
(b) Threshold change: the work the Relatedness page's threshold fragment does on one slider move, timed
    as pure calls outside the server: the cached F1 threshold and ROC/PR curves (st.cache_data hits, as
    in the app), classification_report, the operating point, the four figures (histogram, confusion, ROC,
    PR) and their serialisation as st.plotly_chart does it. Scores: the saved PMI of the first run that
    has pmi_*.npy, else 1,000 + 1,000 synthetic scores (the page's default pair count).
(c) Cold cache, per page: the same with an empty ``$CMVAE_CACHE``; from opening the page, seconds until
    anything besides the title is visible (a status box, progress bar, alert, form, metric or chart) and
    until the page's content is (Retrieval: its caption query, after the test split's birds and features
    are built; Generations: its form).
Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import plotly.io
import plotly.tools
from playwright.sync_api import sync_playwright

from dashboard import logic, plots, state
from engine.relatedness import classification_report

ROOT = Path(__file__).resolve().parents[1]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
# JS predicates: the label of the main content once it is visible and the script run has finished, else null.
DONE = "const app = document.querySelector('[data-test-script-state]'); " \
       "if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return null;"
CONTENT = {
    "models": """() => {""" + DONE + """
        const vis = (sel) => [...document.querySelectorAll(sel)].some(e => e.offsetParent !== null);
        if (document.querySelectorAll('[data-testid="stMetricValue"]').length >= 3
            && vis('.js-plotly-plot .main-svg')) return 'metrics + training curve';
        if (document.querySelectorAll('[data-testid="stMetricValue"]').length >= 3
            && document.body.innerText.includes('No training curve yet')) return 'metrics (no curve yet)';
        if (document.body.innerText.includes('No checkpoints')) return 'no-checkpoint notice';
        return null; }""",
    "relatedness": """() => {""" + DONE + """
        const vis = (sel) => [...document.querySelectorAll(sel)].some(e => e.offsetParent !== null);
        if (document.querySelectorAll('[data-testid="stMetricValue"]').length >= 4
            && vis('.js-plotly-plot .main-svg')) return 'metrics + PMI histogram';
        if ([...document.querySelectorAll('button')].some(b => b.innerText.includes('Compute PMI')))
            return 'Compute PMI form (no saved PMI)';
        if (document.body.innerText.includes('No checkpoints')) return 'no-checkpoint notice';
        return null; }""",
}
PATHS = {"models": "", "relatedness": "relatedness", "retrieval": "retrieval", "generations": "generations"}
CONTENT["retrieval"] = """() => {""" + DONE + """
        if ([...document.querySelectorAll('label')].some(l => l.innerText.includes('Caption')))
            return 'caption query form';
        return null; }"""
CONTENT["generations"] = """() => {""" + DONE + """
        if ([...document.querySelectorAll('button')].some(b => b.innerText.includes('Generate')))
            return 'generation form';
        return null; }"""
# Anything a person sees besides the title: a status box / progress bar, an alert, a form, a metric or a chart.
VISIBLE = """() => {
    const main = document.querySelector('[data-testid="stMain"]') || document.body;
    const sel = '[data-testid="stExpander"], [data-testid="stProgress"], [data-testid="stAlert"], '
              + '[data-testid="stForm"], [data-testid="stMetricValue"], .js-plotly-plot, [data-testid="stSpinner"]';
    const el = [...main.querySelectorAll(sel)].find(e => e.offsetParent !== null);
    return el ? (el.getAttribute('data-testid') || 'chart') : null; }"""


COLD_CACHE_PAGES = ("models", "relatedness", "generations", "retrieval")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cold_start(browser, page: str, env: dict, timeout: float = 400.0) -> tuple[float, float, str, float, float]:
    """(seconds to /_stcore/health, seconds to the page's main content, what was seen), from process start,
    then (seconds to anything visible, seconds to the main content), from opening the page."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ctx = browser.new_context(viewport={"width": 1440, "height": 1200})
    pg = ctx.new_page()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}")
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError("streamlit did not answer /_stcore/health in time")
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read().strip() == b"ok":
                    break
            except OSError:
                time.sleep(0.05)
        healthy = time.perf_counter() - t0
        opened = time.perf_counter()
        pg.goto(f"{url}/{PATHS[page]}")
        pg.wait_for_function(VISIBLE, polling=50, timeout=timeout * 1000)
        visible = time.perf_counter() - opened
        seen = pg.wait_for_function(CONTENT[page], polling=50, timeout=timeout * 1000).json_value()
        return healthy, time.perf_counter() - t0, seen, visible, time.perf_counter() - opened
    finally:
        ctx.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def threshold_scores(checkpoints: Path):
    """(related, unrelated, where from): saved PMI of the first run that has it, else synthetic scores."""
    for rel in sorted(checkpoints.glob("*/pmi_related.npy")):
        unrel = rel.with_name("pmi_unrelated.npy")
        if unrel.is_file():
            return np.load(rel), np.load(unrel), f"saved PMI of {rel.parent.name}"
    rng = np.random.default_rng(0)
    return rng.normal(2.0, 1.5, 1000), rng.normal(0.0, 1.5, 1000), "1,000 + 1,000 synthetic scores"


def threshold_change_ms(related, unrelated, changes: int) -> list[float]:
    """Wall time (ms) of the threshold fragment's work for ``changes`` successive slider steps."""
    scores, labels = logic.scores_labels(related, unrelated)
    lo, hi, step = logic.threshold_range(scores)
    best, _ = state.fit_threshold(scores, labels, "f1")       # first call fills the caches, as on page load
    state.roc_pr(scores, labels)
    t = logic.snap(best, lo, hi, step)
    times = []
    for _ in range(changes):
        t = logic.snap(t + step, lo, hi, step)
        start = time.perf_counter()
        s, y = logic.scores_labels(related, unrelated)
        logic.threshold_range(s)
        state.fit_threshold(s, y, "f1")
        report = classification_report(s, y, t)
        point = logic.operating_point(report)
        curves = state.roc_pr(s, y)
        figs = [plots.pmi_histogram(related, unrelated, t), plots.confusion_figure(report),
                plots.roc_figure(curves, point), plots.pr_figure(curves, point)]
        for fig in figs:
            plotly.io.to_json(plotly.tools.return_figure_from_figure_or_data(fig, validate_figure=True), validate=False)
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", default=str(ROOT / "checkpoints"))
    ap.add_argument("--changes", type=int, default=20)
    a = ap.parse_args()
    checkpoints = Path(a.checkpoints).resolve()
    present = sorted(p.parent.name for p in checkpoints.glob("*/checkpoint.pt"))
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        env = {**os.environ, "CMVAE_CHECKPOINTS": str(checkpoints), "CMVAE_RUNS": runs,
               "CMVAE_REPORTS": str(Path(runs) / "reports")}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                for page in ("models", "relatedness"):
                    healthy, shown, seen, _, _ = cold_start(browser, page, env)
                    rows.append((f"cold start → {page.capitalize()} page rendered ({seen})", f"{shown:.1f} s",
                                 f"server healthy after {healthy:.1f} s"))
                for page in COLD_CACHE_PAGES:
                    with tempfile.TemporaryDirectory() as cache:
                        _, _, seen, visible, ready = cold_start(browser, page, {**env, "CMVAE_CACHE": cache})
                    rows.append((f"empty $CMVAE_CACHE → {page.capitalize()} page: first visible / ready ({seen})",
                                 f"{visible:.3g} s / {ready:.3g} s", "from opening the page"))
            finally:
                browser.close()
    related, unrelated, source = threshold_scores(checkpoints)
    ms = threshold_change_ms(related, unrelated, a.changes)
    rows.append((f"threshold change, server work ({source}; median of {a.changes})",
                 f"{statistics.median(ms):.1f} ms", f"min {min(ms):.1f} ms, max {max(ms):.1f} ms"))
    print(f"Checkpoints with checkpoint.pt in {checkpoints}: {', '.join(present) or 'none'}; "
          f"{os.cpu_count()} CPU cores.\n")
    print("| measurement | value | notes |\n|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
