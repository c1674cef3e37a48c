"""Generations: joint samples from the prior, cross-modal generations and reconstructions.

MNIST-SVHN shows decoded image grids (engine.generate); CUB shows caption text and, for image
features, their nearest train image (engine.captions.cub_generations).
"""
import re

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import logic, state, ui
from engine.modes import CUB_MODES
from engine.modes import modes as generation_modes

CUB = ("cub", "cub-synthetic")
CUB_LABELS = {"joint": "Joint (from the prior)", "image_to_caption": "Image → caption",
              "caption_to_image": "Caption → image", "reconstruct": "Reconstructions"}
CUB_COLUMNS = (("input_image_paths", "input image", 1), ("input_captions", "input caption", 2),
               ("output_image_paths", "generated image (nearest train image)", 1),
               ("output_captions", "generated caption", 2))

st.title("Generations")
st.caption("Samples decoded by the model: joint from the prior p(z), cross-modal from q(z | x_m), "
           "and reconstructions. Inputs appear beside their outputs.")

dataset = ui.pick_dataset("gen", container=st.sidebar)
runs = ui.pick_runs("gen", dataset=dataset, container=st.sidebar, default_names=("cI-MMVAE",))
if not runs:
    st.stop()
run = runs[0]
is_cub = run.dataset in CUB
# The form needs only the mode names (engine.modes, torch-free): importing engine.captions /
# engine.generate first (torch, ~1.7 s of a cold start on the 2-core CPU) kept the page blank.
if is_cub:
    modes = {m: CUB_LABELS.get(m, m) for m in CUB_MODES}
    st.caption("Generated image features are shown as their nearest train image (Euclidean distance in feature "
               "space, as in the paper's Appendix H); captions are decoded greedily or by sampling each word.")
else:
    modes = {m: logic.mode_label(m) for m in generation_modes(("mnist", "svhn"))}

with st.form("gen_form"):
    c1, c2, c3, c4 = st.columns([3, 1, 1, 1.2])
    mode = c1.radio("What to generate", list(modes), format_func=modes.get, horizontal=True, key="gen_mode")
    n = c2.number_input("Samples", min_value=1, max_value=64, value=8 if is_cub else 16, step=1,
                        key="gen_n")
    seed = c3.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="gen_seed")
    decoding = (c4.radio("Caption decoding", ["greedy", "sample"], horizontal=True, key="gen_decoding",
                         help="greedy: the most likely word at each position; sample: one draw per position.")
                if is_cub else "greedy")
    submitted = st.form_submit_button("Generate", type="primary")
if submitted:
    st.session_state["_gen_request"] = (run.key, mode, int(n), int(seed), decoding)
request = st.session_state.get("_gen_request")
if not request or request[0] != run.key or request[1] not in modes:
    st.info("Choose what to generate and press **Generate**.")
    st.stop()
_, mode, n, seed, decoding = request
if is_cub and state.engine_feature("captions", "cub_generations") is None:
    ui.feature_missing("CUB generation", "captions")
    st.stop()
if not is_cub and state.engine_feature("generate", "generations") is None:
    ui.feature_missing("Generation", "generate")
    st.stop()


def md_text(text: str) -> str:
    """Caption text safe for markdown (so tokens like <unk> or * show literally)."""
    return re.sub(r"([\\`*_{}\[\]<>()#+\-.!|~])", r"\\\1", text)


def show_cub(out: dict) -> None:
    """One row per sample: inputs (image, caption) beside outputs (nearest train image, caption)."""
    cols = [(key, title, width) for key, title, width in CUB_COLUMNS if key in out]
    header = st.columns([w for *_, w in cols])
    for col, (_, title, _) in zip(header, cols):
        col.markdown(f"**{title}**")
    for i in range(len(out[cols[0][0]])):
        row = st.columns([w for *_, w in cols], vertical_alignment="center")
        for col, (key, _, _) in zip(row, cols):
            value = out[key][i]
            if key.endswith("image_paths"):
                try:
                    col.image(value, width=120)
                except (OSError, ValueError) as e:
                    col.warning(f"cannot show {value} ({e})")
            else:
                col.markdown(md_text(value) if value.strip() else "*(empty caption)*")


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
            st.dataframe(logic.round_frame(pd.DataFrame(table)), width="stretch", hide_index=True)
    skipped = [f"{k} {np.shape(v)}" for k, v in others.items() if np.ndim(v) > 1]
    if skipped:
        st.caption("Not shown (no viewer for these arrays yet): " + ", ".join(skipped))


try:
    with ui.guarded("Loading the data"):              # CUB: nearest train images too; MNIST-SVHN: test pairs
        ui.data_for(run, state.SPLITS if is_cub else ("test",))
except ui.Handled:
    st.stop()
model = ui.load_model(run)
if model is None:
    st.stop()
label = f"{modes.get(mode, mode)}: {n} samples, seed {seed}" + (f", {decoding} decoding" if is_cub else "")
with ui.section():
    with st.status(f"Generating {label} ...", expanded=False) as status:
        with ui.guarded("Generation"):
            if is_cub:
                out = state.cub_generations(str(run.path), run.mtime, mode, n, seed, decoding)
            else:
                out = state.generations(str(run.path), run.mtime, mode, n, seed)
        status.update(label=label, state="complete")
    if not isinstance(out, dict) or not out:
        st.error("The engine returned no generations for this mode.")
    elif is_cub:
        note = None
        if mode == "image_to_caption":
            try:
                note = logic.caption_quality_note(state.metrics_json(run.path))
            except ValueError as e:            # a malformed metrics.json must not hide the captions
                note = f"{e}; re-run `python -m engine evaluate {run.path}` to rewrite it."
        if note:
            st.caption(note)
        show_cub(out)
    else:
        show_outputs(out, mode, n)
