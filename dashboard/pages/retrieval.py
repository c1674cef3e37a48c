"""Retrieval (CUB): caption → top-k images, image → top-k captions (engine.retrieval)."""
import pandas as pd
import streamlit as st

from dashboard import logic, state, ui

CUB = ("cub", "cub-synthetic")

st.title("Retrieval")
st.caption("Cross-modal retrieval on CUB (engine.retrieval): rank test images for a caption you type, or test "
           "captions for an image. Scores are higher-is-better (minus feature distance, or PMI in nats).")

dataset = ui.pick_dataset("ret", container=st.sidebar, only=CUB)
if dataset is None:
    st.info("Retrieval needs a CUB model and none was found. Train one on the **Train** page with dataset "
            "`cub-synthetic` (offline), or run `python -m engine train --model cI-MMVAE --dataset cub-synthetic "
            "--out runs/cub-cI-MMVAE`.")
    st.stop()
runs = ui.pick_runs("ret", dataset=dataset, container=st.sidebar, default_names=("cI-MMVAE",))
if not runs:
    st.stop()
run = runs[0]
try:
    with ui.guarded("Loading the CUB data"):
        data = ui.data_for(run, ("test",))        # the test split only: its images and their features
except ui.Handled:
    st.stop()
ret = state.engine_feature("retrieval", "captions_for_image", "images_for_caption")
if ret is None:
    ui.feature_missing("Retrieval", "retrieval")
    st.stop()
model = ui.load_model(run)
if model is None:
    st.stop()
by = st.sidebar.radio("Rank by", ["features", "pmi"], key="ret_by",
                      format_func={"features": "feature distance (fast)", "pmi": "PMI (slow, model's own measure)"}.get)


def show_images(hits: list[tuple[int, str, float]]) -> None:
    """Top images in a row, captioned with rank, image id and score."""
    ids = data.image_ids.get("test", [])
    cols = st.columns(min(len(hits), 5) or 1)
    for rank, (row, path, score) in enumerate(hits):
        label = f"#{rank + 1} · image {ids[row] if row < len(ids) else row} · {score:.3g}"
        try:
            cols[rank % len(cols)].image(path, caption=label, width="stretch")
        except (OSError, ValueError) as e:
            cols[rank % len(cols)].warning(f"{label}: cannot show {path} ({e})")


tab_text, tab_image = st.tabs(["Caption → images", "Image → captions"])
with tab_text, ui.section():
    with st.form("caption_query"):
        text = st.text_input("Caption", value="a small bird with a red breast and a short beak", key="ret_caption")
        k = st.slider("k", 1, 20, 5, key="ret_k")
        go = st.form_submit_button("Find images", type="primary")
    if go:
        st.session_state["_ret_text"] = (text, int(k))
    query = st.session_state.get("_ret_text")
    if query:
        text, k = query
        if not text.strip():
            st.error("The caption is empty: type a few words describing a bird.")
        else:
            with st.spinner("Ranking images ..."), ui.guarded("Caption query"):
                hits, unknown = ret.images_for_caption(model, data, text, k, by=by)
            if unknown:
                st.warning("Words not in the model's vocabulary (read as <unk>): " + ", ".join(f"`{w}`" for w in unknown))
            for note in data.vocab.cuts(text):
                st.warning(f"Not read: {note}.")
            ids = data.image_ids.get("test", [])
            st.dataframe(logic.round_frame(pd.DataFrame([{"rank": r + 1, "image id": ids[i] if i < len(ids) else i,
                                                          "score": sc, "path": p} for r, (i, p, sc) in enumerate(hits)])),
                         width="stretch", hide_index=True, key="ret_images_table")
            show_images(hits)

with tab_image, ui.section():
    ids = list(data.image_ids.get("test", []))
    if not ids:
        st.info("This dataset lists no test images.")
    else:
        c1, c2 = st.columns([3, 1])
        row = c1.selectbox("Test image", range(len(ids)), format_func=lambda r: f"image {ids[r]}", key="ret_image")
        k2 = c2.slider("k", 1, 20, 5, key="ret_k2")
        left, right = st.columns([1, 2])
        paths = data.image_paths.get("test", [])
        if row < len(paths):
            left.image(str(paths[row]), caption=f"image {ids[row]}", width="stretch")
        with right, st.spinner("Ranking captions ..."), ui.guarded("Image query"):
            hits = ret.captions_for_image(model, data, int(row), int(k2), by=by)
            right.dataframe(logic.round_frame(pd.DataFrame([{"rank": r + 1, "caption": t, "score": sc}
                                                            for r, (t, sc, _) in enumerate(hits)])),
                            width="stretch", hide_index=True, key="ret_captions_table")
