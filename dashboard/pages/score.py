"""Score your pairs: PMI and a related/unrelated verdict for pairs you upload.

MNIST-SVHN: one MNIST digit image and one SVHN crop. CUB: a CSV of caption,image_id rows.
PMI comes from engine.relatedness.score_pairs; the verdict uses the threshold below.

A CSV is capped at logic.MAX_SCORE_WORK pairs × K per request and, after an estimate, scored in
pieces of about logic.SCORE_CHUNK_WORK (score_pairs' ``offset`` keeps the noise of one call). The
pieces done live in session state, so a rerun continues where it stopped; the progress bar drawn
after each piece is where Streamlit stops the run on Cancel or when the tab closes.
"""
import hashlib
import time

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
    m1.metric("PMI", logic.fmt_number(pmi))
    gap = pmi - threshold
    m2.metric("Verdict", "related" if related else "unrelated", delta=f"{'+' if gap >= 0 else ''}"
              f"{logic.fmt_number(gap)} vs threshold", delta_color="normal" if related else "inverse")


PROBE_PAIRS, PROBE_K = 4, 30


def estimate_rate(xs, ys, K: int) -> float:
    """Importance samples per second of score_pairs on this model, timed on a few pairs at K ≤ 30
    (the rate varies little with K); remembered per model and K for the session."""
    memo = st.session_state.setdefault("_score_rates", {})
    if (run.key, K) not in memo:
        n, k = min(PROBE_PAIRS, len(xs)), min(K, PROBE_K)
        t0 = time.perf_counter()
        rel.score_pairs(model, xs[:n], ys[:n], K=k)
        memo[(run.key, K)] = n * k / max(time.perf_counter() - t0, 1e-6)
    return memo[(run.key, K)]


def _new_job(key) -> None:
    st.session_state["_score_job"] = {"key": key, "pmi": [], "seconds": 0.0, "cancelled": False}


def _cancel_job() -> None:
    st.session_state["_score_job"]["cancelled"] = True


def _resume() -> None:
    st.session_state["_score_job"]["cancelled"] = False


def score_in_pieces(job: dict, xs, ys, K: int) -> None:
    """Score the pairs not yet in ``job`` piece by piece, drawing progress (and a Cancel button) as it goes."""
    n = len(xs)
    if job["cancelled"] or len(job["pmi"]) >= n:
        return
    st.button("Cancel scoring", key="score_cancel", on_click=_cancel_job)
    bar = st.progress(len(job["pmi"]) / n, text=f"Scoring {n:,} pairs ...")
    first, t0 = len(job["pmi"]), time.perf_counter()
    for a, b in logic.chunk_bounds(n, K):
        a = max(a, len(job["pmi"]))
        if a >= b:
            continue
        piece = rel.score_pairs(model, xs[a:b], ys[a:b], K=K, offset=a, progress=False)
        job["pmi"].extend(float(v) for v in np.asarray(piece).ravel())
        job["seconds"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        elapsed = job["seconds"]
        bar.progress(b / n, text=logic.progress_text(b, n, "Pairs scored", elapsed, b - first))
    bar.empty()


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
        cap = logic.score_cap_error(len(pairs), int(K))
        if cap:
            st.error(f"{up.name}: {cap}")
            raise ui.Handled()
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
        xs, ys = feats.to(model.device), torch.stack(encoded).to(model.device)
        key = (run.key, hashlib.sha1(up.getvalue()).hexdigest(), int(K))
        job = st.session_state.get("_score_job")
        if job is None or job["key"] != key:
            with ui.guarded("Timing the scoring"):
                rate = estimate_rate(xs, ys, int(K))
            eta = logic.duration_text(len(pairs) * int(K) / rate)
            st.info(f"{len(pairs):,} pairs × K = {int(K):,}: about {eta} (measured here: {rate:.3g} importance "
                    "samples/s). Scoring runs in pieces with a progress bar and can be cancelled; it stops when this "
                    "tab is closed.")
            st.button(f"Score {len(pairs):,} pairs", type="primary", key="score_go", on_click=_new_job, args=(key,))
            raise ui.Handled()
        with ui.guarded("Scoring the pairs"):
            score_in_pieces(job, xs, ys, int(K))
        pmi = np.asarray(job["pmi"], dtype=np.float64)
        done = len(pmi)
        if done < len(pairs):
            st.warning(f"Cancelled after {done:,} of {len(pairs):,} pairs: the table holds those.")
            st.button("Score the rest", key="score_resume", on_click=_resume)
        else:
            st.success(f"Scored {done:,} pairs in {logic.duration_text(job['seconds'])}.")
        part = pairs.iloc[:done]
        out = pd.DataFrame({"caption": part["caption"], "image_id": part["image_id"], "PMI": pmi,
                            "verdict": logic.verdicts(pmi, threshold), "unknown words": unknown[:done]})
        st.dataframe(logic.round_frame(out), width="stretch", hide_index=True, key="score_table")
        st.download_button("Download results (CSV)", out.to_csv(index=False).encode(), "scored_pairs.csv",
                           "text/csv")
