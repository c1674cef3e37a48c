"""Score your pairs: PMI and a related/unrelated verdict for pairs you upload.

MNIST-SVHN: one MNIST digit image and one SVHN crop. CUB: a CSV of caption,image_id rows.
PMI comes from engine.relatedness.score_pairs; the verdict uses the threshold below.
"""
import numpy as np
import pandas as pd
import streamlit as st
import torch

from dashboard import logic, state, ui

st.title("Score your pairs")
st.caption("Upload a pair and the model tells how related it finds them: PMI ≥ threshold means related.")

dataset = ui.pick_dataset("score", container=st.sidebar)
runs = ui.pick_runs("score", dataset=dataset, container=st.sidebar, default_names=("cI-MMVAE",))
if not runs:
    st.stop()
run = runs[0]
rel = state.engine_feature("relatedness", "score_pairs")
if rel is None:
    ui.feature_missing("Scoring pairs", "relatedness")
    st.stop()


def default_threshold() -> float:
    """The Relatedness page's threshold for this run if set there, else the F1-optimal one on saved PMI."""
    for slot in (0, 1):
        if st.session_state.get(f"thr_{slot}_run") == run.key and f"thr_{slot}" in st.session_state:
            return float(st.session_state[f"thr_{slot}"])
    try:
        saved = state.read_pmi(str(run.path), run.mtime)
        if saved is not None and state.engine_feature("thresholds", "fit_threshold") is not None:
            return state.fit_threshold(*logic.scores_labels(*saved), "f1")[0]
    except ui.engine_errors():
        pass
    return 0.0


c1, c2 = st.columns(2)
threshold = c1.number_input("Threshold on PMI", value=round(default_threshold(), 4), step=0.1, format="%.4f",
                            key=f"score_thr_{run.key}",
                            help="Defaults to the Relatedness page's threshold for this model (or F1-optimal).")
K = c2.number_input("K (importance samples)", min_value=1, max_value=1000, value=30, key="score_K")
model = ui.load_model(run)
if model is None:
    st.stop()


def verdict_line(pmi: float) -> None:
    related = pmi >= threshold
    m1, m2 = st.columns(2)
    m1.metric("PMI", f"{pmi:.3f}")
    m2.metric("Verdict", "related" if related else "unrelated", delta=f"{pmi - threshold:+.3f} vs threshold",
              delta_color="normal" if related else "inverse")


if run.dataset == "mnist-svhn":
    shapes = [tuple(model.mods[m].event_shape) for m in range(2)]
    u1, u2 = st.columns(2)
    up_m = u1.file_uploader(f"MNIST digit (PNG/JPEG, {shapes[0][2]}×{shapes[0][1]} grey)",
                            type=["png", "jpg", "jpeg"], key="up_mnist")
    up_s = u2.file_uploader(f"SVHN crop (PNG/JPEG, {shapes[1][2]}×{shapes[1][1]} colour)",
                            type=["png", "jpg", "jpeg"], key="up_svhn")
    arrays = []
    for up, shape, col, name in ((up_m, shapes[0], u1, "MNIST"), (up_s, shapes[1], u2, "SVHN")):
        if up is None:
            continue
        try:
            a = logic.prepare_image(up.getvalue(), shape)
        except ValueError as e:
            col.error(f"{name} upload '{up.name}': {e}")
            continue
        col.image(logic.image_grid(a[None], ncols=1, pad=0, scale=4), caption=f"{name} as the model sees it")
        arrays.append(a)
    if len(arrays) == 2:
        with ui.section(), ui.guarded("Scoring the pair"):
            xs, ys = (torch.from_numpy(a[None]).to(model.device) for a in arrays)
            pmi = float(np.asarray(rel.score_pairs(model, xs, ys, K=int(K))).ravel()[0])
            verdict_line(pmi)
    elif up_m is None or up_s is None:
        st.info("Upload both images to score the pair.")
else:
    up = st.file_uploader("CSV with columns caption,image_id", type=["csv"], key="up_csv")
    st.caption("Example row: `a small yellow bird with black wings,42` (image ids as in CUB's images.txt).")
    if up is None:
        st.stop()
    with ui.section():
        try:
            pairs = logic.parse_pairs_csv(up.getvalue())
        except ValueError as e:
            st.error(f"{up.name}: {e}")
            raise ui.Handled() from e
        with ui.guarded("Loading the CUB data"):
            data = ui.data_for(run)
        where = {i: (s, r) for s in ("train", "test") for r, i in enumerate(data.image_ids.get(s, []))}
        unknown_ids = sorted(set(pairs["image_id"]) - set(where))
        if unknown_ids:
            st.error(f"image id(s) {', '.join(map(str, unknown_ids[:10]))} are not in this dataset; use ids from "
                     "CUB's images.txt that the model's data holds")
            raise ui.Handled()
        feats = torch.stack([data.unimodal[where[i][0]]["image"][0][where[i][1]] for i in pairs["image_id"]])
        encoded, unknown = [], []
        with ui.guarded("Encoding captions"):
            for text in pairs["caption"]:
                ids, unk = data.vocab.encode(text, warn=False)
                encoded.append(ids)
                unknown.append("; ".join([", ".join(unk)] * bool(unk) + data.vocab.cuts(text)))
        with ui.guarded("Scoring the pairs"):
            pmi = np.asarray(rel.score_pairs(model, feats.to(model.device), torch.stack(encoded).to(model.device),
                                             K=int(K))).ravel()
        out = pd.DataFrame({"caption": pairs["caption"], "image_id": pairs["image_id"], "PMI": pmi,
                            "verdict": logic.verdicts(pmi, threshold), "unknown words": unknown})
        st.dataframe(out, width="stretch", hide_index=True)
        st.download_button("Download results (CSV)", out.to_csv(index=False).encode(), "scored_pairs.csv",
                           "text/csv")
