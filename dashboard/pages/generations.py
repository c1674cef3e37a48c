"""Generations: joint samples from the prior, cross-modal generations and reconstructions."""
import numpy as np
import pandas as pd
import streamlit as st

from dashboard import logic, state, ui

st.title("Generations")
st.caption("Samples decoded by the model: joint from the prior p(z), cross-modal from q(z | x_m), "
           "and reconstructions. Inputs appear beside their outputs, in the same grid positions.")

dataset = ui.pick_dataset("gen", container=st.sidebar)
runs = ui.pick_runs("gen", dataset=dataset, container=st.sidebar, default_names=("cI-MMVAE",))
if not runs:
    st.stop()
run = runs[0]
gen_mod = state.engine_feature("generate", "generations")
if gen_mod is None:
    ui.feature_missing("Generation", "generate")
    st.stop()
names = ("mnist", "svhn") if run.dataset == "mnist-svhn" else ("image", "caption")
modes = {m: logic.mode_label(m) for m in gen_mod.modes(names)} if hasattr(gen_mod, "modes") else {"joint": "joint"}

with st.form("gen_form"):
    c1, c2, c3 = st.columns([2, 1, 1])
    mode = c1.radio("What to generate", list(modes), format_func=modes.get, horizontal=True, key="gen_mode")
    n = c2.number_input("Samples", min_value=1, max_value=64, value=16, step=1, key="gen_n")
    seed = c3.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="gen_seed")
    submitted = st.form_submit_button("Generate", type="primary")
if submitted:
    st.session_state["_gen_request"] = (run.key, mode, int(n), int(seed))
request = st.session_state.get("_gen_request")
if not request or request[0] != run.key:
    st.info("Choose what to generate and press **Generate**.")
    st.stop()
_, mode, n, seed = request


def show_outputs(out: dict, mode: str, n: int) -> None:
    """Image batches as aligned grids (inputs beside outputs); other 1-D arrays as one table."""
    ncols = min(n, 8)
    for row in logic.layout_rows([k for k, v in out.items() if logic.is_image_batch(v)]):
        cols = st.columns(len(row))
        for col, key in zip(cols, row):
            with col:
                st.markdown(f"**{logic.pretty_key(key, mode)}**")
                side = logic.to_hwc(out[key]).shape[1]
                st.image(logic.image_grid(out[key], ncols=ncols, scale=3 if side <= 32 else 1), width="stretch")
    others = {k: np.asarray(v) for k, v in out.items() if not logic.is_image_batch(v)}
    table = {k: [str(x) for x in v.ravel()] if v.dtype.kind in "OUS" else v.ravel()
             for k, v in others.items() if v.ndim <= 1 and v.size}
    if table and len({len(v) for v in table.values()}) == 1:
        with st.expander("Labels and other outputs"):
            st.dataframe(pd.DataFrame(table), width="stretch", hide_index=True)
    skipped = [f"{k} {np.shape(v)}" for k, v in others.items() if np.ndim(v) > 1]
    if skipped:
        st.caption("Not shown (no viewer for these arrays yet): " + ", ".join(skipped))


model = ui.load_model(run)
if model is None:
    st.stop()
with ui.section():
    with st.status(f"Generating {modes.get(mode, mode)} ({n} samples, seed {seed}) ...", expanded=False) as status:
        with ui.guarded("Generation"):
            out = state.generations(str(run.path), run.mtime, mode, n, seed)
        status.update(label=f"{modes.get(mode, mode)}: {n} samples, seed {seed}", state="complete")
    if not isinstance(out, dict) or not out:
        st.error("The engine returned no generations for this mode.")
    else:
        show_outputs(out, mode, n)
