"""Compare: evaluation metrics (metrics.json) of several runs side by side, and propagation reports.

Tables show rates as percentages and other numbers to 3 significant figures (logic.format_table);
the bar chart plots the unrounded values.
"""
import json

import streamlit as st

from dashboard import logic, plots, runs, state, ui

st.title("Compare")
st.caption("Evaluation results written by `python -m engine evaluate <run>` (metrics.json), side by side.")

dataset = ui.pick_dataset("cmp", container=st.sidebar)
chosen = ui.pick_runs("cmp", multi=True, dataset=dataset, label="Checkpoints", container=st.sidebar,
                      default_names=("MMVAE", "cI-MMVAE", "cC-MMVAE"))
metrics = {}
for run in chosen:
    try:
        m = state.metrics_json(run.path)
    except ValueError as e:
        st.error(f"{run.name}: {e}. Re-run `python -m engine evaluate {run.path}`.")
        continue
    if m is None:
        st.info(f"{run.name} has no metrics.json yet: run `python -m engine evaluate {run.path}`.")
    else:
        metrics[run.name] = m
if metrics:
    table = logic.metrics_table(metrics)
    st.dataframe(logic.format_table(table), width="stretch", key="cmp_table")
    rows = logic.numeric_rows(table)
    if rows:
        picked = st.multiselect("Metrics to plot", rows, default=rows[: min(4, len(rows))], key="cmp_rows")
        if picked:
            st.plotly_chart(plots.metric_bars(table, picked, title="Metrics by run"), key="cmp_bars")

st.header("Label propagation")
reports = runs.propagation_reports()
if not reports:
    st.info(f"No reports in `{runs.reports_root() / 'relatedness'}` yet. They come from "
            "`python -m engine propagate ...` (label propagation with relatedness, paper §4.4).")
for path in reports:
    with st.expander(path.stem, expanded=len(reports) == 1):
        try:
            rep = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            st.error(f"{path.name} is unreadable ({e}); regenerate it with `python -m engine propagate`.")
            continue
        table = logic.metrics_table({path.stem: rep})
        st.dataframe(logic.format_table(table), width="stretch", key=f"prop_{path.stem}")
