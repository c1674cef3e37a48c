"""Plotly figures for the dashboard (built from arrays and frames; no streamlit here)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

RELATED = "#2a9d8f"
UNRELATED = "#e76f51"
ACCENT = "#264653"
PALETTE = ["#264653", "#2a9d8f", "#e9c46a", "#f4a261", "#e76f51", "#8ab17d", "#6d597a", "#457b9d"]


def _layout(fig: go.Figure, title: str, height: int = 320, **kw) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.0, font=dict(size=15)), height=height, template="plotly_white",
                      margin=dict(l=50, r=20, t=45, b=45), legend=dict(orientation="h", y=-0.22), **kw)
    return fig


def pmi_histogram(related: np.ndarray, unrelated: np.ndarray, threshold: float | None = None,
                  title: str = "PMI of test pairs", bins: int = 60) -> go.Figure:
    """Overlaid density histograms of PMI for related and unrelated pairs, threshold as a line.

    Binned here (numpy) so the browser receives 2 x ``bins`` bars, not every score.
    """
    related, unrelated = np.ravel(related), np.ravel(unrelated)
    both = np.concatenate([related, unrelated])
    both = both[np.isfinite(both)]
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    fig = go.Figure()
    for arr, name, color in ((related, "related pairs", RELATED), (unrelated, "unrelated pairs", UNRELATED)):
        density, _ = np.histogram(arr[np.isfinite(arr)], bins=edges, density=bool(np.isfinite(arr).any()))
        fig.add_trace(go.Bar(x=centres, y=density, width=width, name=f"{name} (n={arr.size:,})",
                             marker_color=color, opacity=0.6))
    if threshold is not None:
        fig.add_vline(x=threshold, line=dict(color=ACCENT, width=2, dash="dash"),
                      annotation_text=f"threshold {threshold:.4g}", annotation_position="top")
    fig.update_layout(barmode="overlay", bargap=0)
    fig.update_xaxes(title="PMI = log p(x,y) − log p(x) − log p(y)")
    fig.update_yaxes(title="density")
    return _layout(fig, title)


def roc_figure(curves: dict, point: dict | None = None) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=curves["fpr"], y=curves["tpr"], mode="lines", line=dict(color=RELATED, width=2),
                             name=f"ROC (AUC {curves['roc_auc']:.3f})"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbbbbb", dash="dot"),
                             name="chance", hoverinfo="skip"))
    if point:
        fig.add_trace(go.Scatter(x=[point["fpr"]], y=[point["tpr"]], mode="markers", name="threshold",
                                 marker=dict(color=UNRELATED, size=12, line=dict(color="white", width=2))))
    fig.update_xaxes(title="false positive rate", range=[0, 1])
    fig.update_yaxes(title="true positive rate", range=[0, 1.02])
    return _layout(fig, "ROC curve", height=300)


def pr_figure(curves: dict, point: dict | None = None) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=curves["recall"], y=curves["precision"], mode="lines",
                             line=dict(color=ACCENT, width=2), name=f"PR (AP {curves['average_precision']:.3f})"))
    if point:
        fig.add_trace(go.Scatter(x=[point["recall"]], y=[point["precision"]], mode="markers", name="threshold",
                                 marker=dict(color=UNRELATED, size=12, line=dict(color="white", width=2))))
    fig.update_xaxes(title="recall", range=[0, 1])
    fig.update_yaxes(title="precision", range=[0, 1.02])
    return _layout(fig, "Precision–recall curve", height=300)


def confusion_figure(report: dict) -> go.Figure:
    """2×2 confusion matrix (rows: truth, columns: verdict) from a classification report's counts."""
    tp, fp, tn, fn = (int(report.get(k, 0)) for k in ("tp", "fp", "tn", "fn"))
    z = [[tp, fn], [fp, tn]]
    text = [[f"TP<br>{tp}", f"FN<br>{fn}"], [f"FP<br>{fp}", f"TN<br>{tn}"]]
    fig = go.Figure(go.Heatmap(z=z, x=["judged related", "judged unrelated"], y=["related", "unrelated"],
                               text=text, texttemplate="%{text}", colorscale=[[0, "#f1faee"], [1, RELATED]],
                               showscale=False, hoverinfo="skip", textfont=dict(size=16)))
    fig.update_yaxes(autorange="reversed", title="truth")
    return _layout(fig, "Confusion matrix", height=300)


def training_curves(df: pd.DataFrame, columns: list[str], x: str = "step", title: str = "Training curves") -> go.Figure:
    fig = go.Figure()
    xs = df[x] if x in df else df.index
    for i, c in enumerate(columns):
        if c in df:
            fig.add_trace(go.Scatter(x=xs, y=df[c], mode="lines+markers", name=c,
                                     line=dict(color=PALETTE[i % len(PALETTE)], width=2)))
    fig.update_xaxes(title=x)
    return _layout(fig, title, height=340)


def metric_bars(table: pd.DataFrame, rows: list[str], title: str = "Metrics") -> go.Figure:
    """Grouped bars: one group per metric row, one bar per run column."""
    fig = go.Figure()
    num = table.apply(pd.to_numeric, errors="coerce")
    for i, col in enumerate(table.columns):
        fig.add_trace(go.Bar(x=rows, y=[num.loc[r, col] for r in rows], name=str(col),
                             marker_color=PALETTE[i % len(PALETTE)]))
    fig.update_layout(barmode="group")
    return _layout(fig, title, height=380)
