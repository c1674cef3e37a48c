"""Train: launch `python -m engine train` in the background, follow it, cancel it.

One run at a time (a lock the trainer holds; recorded in <runs>/.active.json); it lands in the runs
folder and appears in every checkpoint picker once its first checkpoint is saved. With
CMVAE_DASHBOARD_TRAINING=off the page only shows the last run: no form, no Cancel.
"""
import streamlit as st

from dashboard import jobs, logic, plots, runs
from engine.config import DATASETS
from engine.errors import ConfigError
from engine.registry import VARIANTS

st.title("Train")
st.caption(f"Runs are written to `{runs.runs_root()}` and show up in the checkpoint pickers.")
root = runs.runs_root()
allowed, why_not = jobs.training_allowed()
if not allowed:
    st.info(f"{why_not} Runs started from a shell still show up in the checkpoint pickers.")

if allowed:
    d1, d2, d3 = st.columns(3)
    dataset = d1.selectbox("Dataset", DATASETS, key="tr_dataset",
                           help="cub-synthetic is an offline stand-in for CUB; cub needs the real CUB files.")
    source = (d2.selectbox("Source", ["offline", "real"], key="tr_source",
                           help="offline: the embedded data, no download; real: torchvision files under the data root.")
              if dataset == "mnist-svhn" else "offline")
    data_root = ""
    if jobs.needs_data_root(dataset, source):
        data_root = d3.text_input("Data root", key="tr_data_root", placeholder="/path/to/data",
                                  help="CUB_200_2011/ and cub_text/ for cub; MNIST/ and SVHN files for the real source.")

    with st.form("train_form"):
        c1, c2 = st.columns([2, 1])
        variant = c1.selectbox("Model", VARIANTS, index=VARIANTS.index("cI-MMVAE"), key="tr_model")
        name = c2.text_input("Run name", value="", placeholder=logic.default_run_name(variant, dataset),
                             key="tr_name", help="Folder name under the runs root; empty: model-dataset-time.")
        c4, c5, c6 = st.columns(3)
        fraction = c4.slider("Data fraction", 0.01, 1.0, 0.1, step=0.01, key="tr_fraction",
                             help="Share n of each unimodal train set (paper §4.4).")
        epochs = c5.number_input("Epochs", 1, 1000, 1, key="tr_epochs")
        max_steps = c6.number_input("Max steps (0: no limit)", 0, 10_000_000, 200, key="tr_steps")
        c7, c8, c9, c10 = st.columns(4)
        K = c7.number_input("K", 1, 1000, 30, key="tr_K", help="Importance samples.")
        N = c8.number_input("N", 1, 100, 5, key="tr_N", help="In-batch negatives per pair (eq. 4).")
        gamma = c9.number_input("gamma", 0.01, 1000.0, 2.0, step=0.5, key="tr_gamma",
                                help="Weight of the joint term in eq. (4); only the contrastive (c*) variants use it.")
        batch = c10.number_input("Batch size", 2, 4096, 128, key="tr_batch")
        b1, b2, b3, b4 = st.columns([3, 1, 1, 1])
        looser = b1.checkbox("Looser stratified bound (MMVAE variants)", value=jobs.default_looser(dataset),
                             key=f"tr_looser_{dataset}",
                             help="Average each expert's own IWAE instead of one IWAE over both experts' samples "
                                  "(the engine's default for MMVAE variants). With one IWAE over all samples one "
                                  "expert takes all the gradient and the other collapses (the caption expert on "
                                  "CUB, the MNIST expert of cI-/cC-MMVAE on MNIST-SVHN). MVAE and JMVAE have no "
                                  "mixture and ignore this.")
        tight_after = b2.number_input("Tight bound from step (0: never)", 0, 10_000_000, 0, key="tr_tight_after",
                                      help="With the looser bound: train the tight bound from this step on (the "
                                           "shipped MNIST-SVHN recipe: 60,000 looser steps, then 10,000 tight; "
                                           "reports/diagnosis H13). MVAE and JMVAE ignore this.")
        tight_gamma = b3.number_input("gamma from that step (0: same)", 0.0, 1000.0, 0.0, step=0.5,
                                      key="tr_tight_gamma",
                                      help="The contrastive variants' gamma in the tight phase: under the tight "
                                           "bound gamma 2 keeps the SVHN decoder from rendering MNIST latents, 4 "
                                           "does not (reports/diagnosis H15). Baselines ignore it.")
        tight_K = b4.number_input("K from that step (0: same)", 0, 1000, 0, key="tr_tight_K",
                                  help="Importance samples in the tight phase (tried on the birds at K=10: "
                                       "reports/diagnosis H19). MVAE and JMVAE ignore this.")
        submitted = st.form_submit_button("Start training", type="primary")

    if submitted:
        run_name = (name or "").strip() or logic.default_run_name(variant, dataset)
        if jobs.needs_data_root(dataset, source) and not data_root.strip():
            st.error(f"Dataset {dataset}{' (real source)' if source == 'real' else ''} reads its files from a data "
                     "root: fill in **Data root** above, or pick cub-synthetic / the offline source.")
        else:
            argv = jobs.train_argv(run_name, root)
            try:
                cfg = jobs.train_config(variant, dataset, fraction, epochs, max_steps or None, K, N, gamma, batch,
                                        source=source, data_root=data_root.strip() or None, looser=looser,
                                        tight_after=tight_after, tight_gamma=tight_gamma, tight_K=tight_K)
                job = jobs.start(run_name, argv, root, config=cfg)
            except jobs.JobBusy as e:
                st.warning(f"Not started: {e}.")
            except (jobs.JobError, ConfigError, OSError) as e:
                st.error(f"Cannot start the run: {e}")
            else:
                st.session_state["_train_history"] = []
                st.success(f"Started **{job.name}** (pid {job.pid}).")
                with st.expander("Command and config"):
                    st.code(" ".join(argv), language="bash")
                    st.json(cfg.to_dict())


def _cancel() -> None:
    if not allowed:
        return
    job = jobs.cancel(root)
    st.session_state["_train_msg"] = f"Cancelled {job.name}." if job else "No run was active."


def live() -> None:
    """Progress of the current (or last) run; a fragment that polls progress.json every 2 s while one runs."""
    job = jobs.last_job(root)
    if job is None:
        st.info("No training run yet. Fill in the form and press **Start training**.")
        return
    state = jobs.status(job)
    prog = jobs.progress(job)
    history = logic.append_history(st.session_state.get("_train_history", []), prog)
    st.session_state["_train_history"] = history
    st.subheader(f"{job.name}: {state}")
    total, step = prog.get("total_steps"), prog.get("step", 0)
    if state == "running":
        frac = min(step / total, 1.0) if total else 0.0
        st.progress(frac, text=f"step {step:,} / {f'{total:,}' if total else '?'} · epoch {prog.get('epoch', 0)}"
                    + (f" · loss {logic.fmt_number(prog['loss'])}" if "loss" in prog else ""))
        if allowed:
            st.button("Cancel run", on_click=_cancel, type="secondary", key="tr_cancel")
    elif state == "done":
        st.progress(1.0, text=f"finished: {step:,} steps")
        st.success(f"Finished. **{job.name}** is now in the checkpoint pickers (runs).")
    else:
        st.error(f"{job.name} stopped before finishing (cancelled, or it failed). The log's end is below and says "
                 "what was saved; a checkpoint, if any, can be resumed with `--resume`.")
    msg = st.session_state.pop("_train_msg", None)
    if msg:
        st.info(msg)
    curve = logic.curve_frame([h for h in history if "loss" in h])
    epochs = logic.curve_frame(_read_metrics(job))
    if not curve.empty and len(curve) > 1:
        st.plotly_chart(plots.training_curves(curve, ["loss"], title="Loss (live, every 20 steps)"), key="tr_live")
    elif not epochs.empty:
        cols = [c for c in ("loss", "test_iwae") if c in epochs]
        st.plotly_chart(plots.training_curves(epochs, cols, title="Per-epoch metrics"), key="tr_epochs_plot")
    with st.expander("Log", expanded=state == "stopped"):
        st.code(jobs.log_tail(job) or "(empty)", language="text")


def _read_metrics(job) -> list[dict]:
    from engine.train import read_metrics       # torch (~2 s): imported once a run exists, after the form

    try:
        return read_metrics(job.out)
    except (OSError, ValueError):
        return []


st.fragment(live, run_every=2.0 if jobs.active(root) else None)()
