"""Models: pick checkpoints; see their config, training curves (metrics.jsonl) and metrics.json."""
import streamlit as st

from dashboard import logic, plots, state, ui

st.title("Models")
st.caption("Checkpoints from the shipped `checkpoints/` folder and from `runs/` (trained here or on the CLI).")

dataset = ui.pick_dataset("models", container=st.sidebar)
chosen = ui.pick_runs("models", multi=True, dataset=dataset, label="Checkpoints", container=st.sidebar,
                      default_names=("MMVAE", "cI-MMVAE"), max_selections=6)
if not chosen:
    st.stop()

for run in chosen:
    st.subheader(run.name)
    st.caption(f"{run.variant} · {run.dataset} · `{run.path}`")
    if run.problem:
        st.error(f"{run.name}: {run.problem}. Pick another checkpoint or retrain this one. " + ui.how_to_train())
        continue
    info, curves = st.columns([1, 2])
    with info:
        cfg = run.config
        obj = cfg.get("objective", {})
        c1, c2, c3 = st.columns(3)
        c1.metric("K", logic.fmt_number(obj.get("K")))
        c2.metric("N", logic.fmt_number(obj.get("N")))
        c3.metric("gamma", logic.fmt_number(obj.get("gamma")))
        with st.expander("config.json"):
            st.json(cfg)
        # After the config: loading a model imports torch (~1.7 s of a cold start on the 2-core CPU).
        model = ui.load_model(run)
        if model is not None:
            n_params = sum(p.numel() for p in model.parameters())
            st.success(f"Loaded: {n_params:,} parameters on {model.device}")
    with curves:
        df = logic.curve_frame(state.read_metrics(str(run.path), run.mtime))
        if df.empty:
            st.info("No training curve yet (metrics.jsonl is empty).")
        else:
            cols = [c for c in ("loss", "term1", "term2", "elbo", "test_iwae") if c in df]
            st.plotly_chart(plots.training_curves(df, cols, x="step" if "step" in df else "epoch"),
                            key=f"curve_{run.key}")
            st.caption("loss: the minimised objective (lower is better); elbo, test_iwae: log-likelihood bounds "
                       "(higher is better); term1, term2: the two terms of eq. (4) (term2 for contrastive runs only).")
    try:
        metrics = state.metrics_json(run.path)
    except ValueError as e:
        st.error(f"{e}. Re-run `python -m engine evaluate {run.path}` to rewrite it.")
        metrics = None
    if metrics is None:
        st.info(f"No evaluation yet (metrics.json). Run `python -m engine evaluate {run.path}` to add one.")
    else:
        table = logic.metrics_table({run.name: metrics})
        st.dataframe(logic.format_table(table), width="stretch")
        rows = logic.alignment_summary(metrics.get("alignment"))
        if rows:
            st.markdown("**Expert alignment** (`engine evaluate`: 1 = unaligned for the distance ratio, "
                        "0 = decoder ignores the other expert for the spread)")
            for col, (label, value, meaning) in zip(st.columns(len(rows)), rows):
                col.metric(label, value, help=meaning)
                col.caption(meaning)
    st.divider()
