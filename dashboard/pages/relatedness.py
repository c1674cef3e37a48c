"""Relatedness: PMI of related vs unrelated test pairs and a threshold that turns PMI into verdicts.

Scores come from the run folder (pmi_related.npy / pmi_unrelated.npy, written by
``python -m engine relatedness``) or, if absent, from engine.relatedness.evaluate_relatedness.
Moving a threshold reruns only its fragment: metrics come from the engine's classification_report
on cached scores, so PMI is never recomputed. Runs and thresholds live in the URL (?runs=..&t=..);
a hand-typed ?threshold= is read as t, and other keys are named as ignored.
"""
import streamlit as st

st.title("Relatedness")
st.caption("Pointwise mutual information PMI(x, y) = log p(x,y) − log p(x) − log p(y) on test pairs. "
           "A pair is judged **related** when its PMI is at least the threshold. A contrastive model "
           "(cI-/cC-) should separate the two histograms better than its baseline. The red dot on the ROC and "
           "precision–recall curves is the current threshold.")
# A spinner before the imports below: on a fresh server they, the run scan and the threshold fit take
# ~2 s before the first metric (3.6 s to first content measured, BENCHMARKS.md), so the page shows it is working.
loading = st.empty()
loading.status("Loading the PMI scores and fitting thresholds …")

import numpy as np  # noqa: E402

from dashboard import logic, plots, state, ui  # noqa: E402

URL_KEYS = {"runs", "t", "threshold", "embed", "embed_options"}

# ---- URL -> selection (once per session) ---------------------------------------------------------
if "_rel_url_read" not in st.session_state:
    st.session_state["_rel_url_read"] = True
    names = [n for n in st.query_params.get("runs", "").split(",") if n]
    if names:
        from dashboard.runs import find_runs

        st.session_state["_picked_rel"] = [r.key for n in names for r in find_runs() if r.name == n][:2]
    given = st.query_params.get("t") or st.query_params.get("threshold", "")
    if "threshold" in st.query_params:         # a hand-typed ?threshold= works like ?t= (the name the page writes)
        del st.query_params["threshold"]
    st.session_state["_rel_url_t"] = [logic.parse_float(t) for t in given.split(",")]
    unknown = sorted(set(st.query_params) - URL_KEYS)
    if unknown:
        st.session_state["_rel_url_unknown"] = unknown
    if any(t.strip() and logic.parse_float(t) is None for t in given.split(",")):
        st.session_state["_rel_url_bad_t"] = given
if st.session_state.get("_rel_url_unknown"):
    st.warning("Ignored in the link: " + ", ".join(f"`?{k}=`" for k in st.session_state["_rel_url_unknown"])
               + ". This page reads `runs=` (model names, comma-separated) and `t=` (or `threshold=`: one threshold "
               "per model).")
if st.session_state.get("_rel_url_bad_t"):
    st.warning(f"Ignored the link's threshold `{st.session_state['_rel_url_bad_t']}`: expected numbers, one per "
               "model, comma-separated (e.g. `t=1.5,2`).")

dataset = ui.pick_dataset("rel", container=st.sidebar)
runs = ui.pick_runs("rel", multi=True, dataset=dataset, max_selections=2, label="Models (one or two)",
                    default_names=("MMVAE", "cI-MMVAE"), container=st.sidebar)
if not runs:
    loading.empty()
    st.stop()
st.query_params["runs"] = ",".join(r.name for r in runs)
rel_mod = state.engine_feature("thresholds", "classification_report", "fit_threshold")


def pick_arrays(result: dict) -> tuple[np.ndarray, np.ndarray]:
    """(related, unrelated) PMI arrays from evaluate_relatedness's result."""
    for a, b in (("pmi_related", "pmi_unrelated"), ("related", "unrelated")):
        if a in result and b in result:
            return np.asarray(result[a]), np.asarray(result[b])
    raise KeyError(f"evaluate_relatedness returned no PMI arrays (keys: {', '.join(map(str, result))})")


def scores_of(run, slot: int):
    """(related, unrelated) PMI of a run: saved arrays, else computed on request; None if unavailable."""
    try:
        saved = state.read_pmi(str(run.path), run.mtime)
    except (OSError, ValueError) as e:
        st.error(f"{run.name}: the saved PMI arrays are unreadable ({e}). Recompute them with "
                 f"`python -m engine relatedness {run.path}`.")
        saved = None
    if saved is not None:
        st.caption(f"PMI read from `{run.path.name}/pmi_*.npy`")
        return saved
    if state.engine_feature("relatedness", "evaluate_relatedness") is None:
        ui.feature_missing("Computing PMI", "relatedness")
        return None
    req_key = f"_rel_req_{run.key}"
    with st.form(f"compute_{slot}"):
        st.write(f"No saved PMI for **{run.name}**. Compute it on test pairs:")
        c1, c2, c3 = st.columns(3)
        n_pairs = c1.number_input("Pairs of each kind", 50, 20000, 1000, step=50, key=f"npairs_{slot}")
        K = c2.number_input("K (importance samples)", 1, 1000, 10, key=f"K_{slot}")
        seed = c3.number_input("Seed", 0, 2**31 - 1, 0, key=f"seed_{slot}")
        if st.form_submit_button("Compute PMI"):
            st.session_state[req_key] = (int(n_pairs), int(K), int(seed))
    req = st.session_state.get(req_key)
    if req is None:
        return None
    try:
        with ui.guarded("Loading the test pairs"):
            ui.data_for(run, ("test",))
    except ui.Handled:
        return None
    model = ui.load_model(run)
    if model is None:
        return None
    with ui.section():
        with st.status(f"Computing PMI of {req[0]} related and {req[0]} unrelated pairs (K={req[1]}) ...") as s:
            with ui.guarded("Computing PMI"):
                result = state.compute_relatedness(str(run.path), run.mtime, *req)
                arrays = pick_arrays(result)
            s.update(label=f"PMI computed ({req[0]} pairs each, K={req[1]}, seed {req[2]})", state="complete",
                     expanded=False)
        return arrays
    return None


def sync_url() -> None:
    """Write the current thresholds into the URL, one per selected run."""
    values = [st.session_state.get(f"thr_{i}") for i in range(len(runs))]
    st.query_params["t"] = ",".join("" if v is None else f"{v:.6g}" for v in values)


@st.fragment
def threshold_panel(run, slot: int, related: np.ndarray, unrelated: np.ndarray, compact: bool) -> None:
    """Slider + metrics + confusion matrix + ROC/PR operating point; reruns alone on slider moves."""
    scores, labels = logic.scores_labels(related, unrelated)
    if np.unique(labels).size < 2:
        st.error(f"{run.name}: PMI needs both related and unrelated pairs; one set is empty or non-finite.")
        return
    if rel_mod is None:
        st.plotly_chart(plots.pmi_histogram(related, unrelated, title=f"PMI — {run.name}"), key=f"hist_{slot}")
        ui.feature_missing("Thresholds and precision/recall", "relatedness")
        return
    lo, hi, step = logic.threshold_range(scores)
    with ui.section():
        with ui.guarded("Fitting the F1-optimal threshold"):
            best, _ = state.fit_threshold(scores, labels, "f1")
        best = logic.snap(best, lo, hi, step)
        key = f"thr_{slot}"
        if st.session_state.get(f"{key}_run") != run.key:      # new run in this slot: URL value or F1-optimal
            url_t = st.session_state.get("_rel_url_t", [])
            start = url_t[slot] if slot < len(url_t) and url_t[slot] is not None else best
            st.session_state[key] = logic.snap(start, lo, hi, step)
            st.session_state[f"{key}_run"] = run.key
        else:
            st.session_state[key] = logic.snap(st.session_state.get(key, best), lo, hi, step)
        st.slider("Threshold on PMI", min_value=lo, max_value=hi, step=step, key=key,
                  help="Pairs with PMI ≥ threshold are judged related. Arrow keys move it one step.")
        st.button("F1-optimal threshold", key=f"best_{slot}", on_click=_set_best, args=(key, best),
                  help=f"Set the threshold that maximises F1 on these pairs ({best:.4g}).")
        t = float(st.session_state[key])
        with ui.guarded("Scoring at this threshold"):
            report = rel_mod.classification_report(scores, labels, t)
        sync_url()
        m = st.columns(4)
        for col, name in zip(m, ("precision", "recall", "f1", "accuracy")):
            col.metric(name.capitalize() if name != "f1" else "F1", logic.fmt_percent(float(report[name])))
        point = logic.operating_point(report)
        curves = state.roc_pr(scores, labels)
        hist = plots.pmi_histogram(related, unrelated, t, title=f"PMI — {run.name}")
        figs = [plots.confusion_figure(report), plots.roc_figure(curves, point), plots.pr_figure(curves, point)]
        if compact:
            st.plotly_chart(hist, key=f"hist_{slot}")
            for i, fig in enumerate(figs):
                st.plotly_chart(fig, key=f"fig_{slot}_{i}")
        else:
            a, b = st.columns([3, 2])
            a.plotly_chart(hist, key=f"hist_{slot}")
            b.plotly_chart(figs[0], key=f"fig_{slot}_0")
            c, d = st.columns(2)
            c.plotly_chart(figs[1], key=f"fig_{slot}_1")
            d.plotly_chart(figs[2], key=f"fig_{slot}_2")


def _set_best(key: str, best: float) -> None:
    st.session_state[key] = best


columns = st.columns(len(runs), gap="large")
for slot, (run, col) in enumerate(zip(runs, columns)):
    with col:
        st.subheader(f"{run.name}")
        st.caption(f"{run.variant} · {run.dataset}")
        arrays = scores_of(run, slot)
        if arrays is not None:
            threshold_panel(run, slot, arrays[0], arrays[1], compact=len(runs) > 1)
loading.empty()
