"""Widgets shared by the pages: the run picker, guarded model loading, friendly engine errors."""
from __future__ import annotations

import time
from contextlib import contextmanager

import streamlit as st

from dashboard import runs as R
from dashboard import state
from dashboard.logic import progress_text
from engine.errors import EngineError

HOW_TO_TRAIN = ("Train one on the **Train** page, or from a shell: "
                "`python -m engine train --model cI-MMVAE --out runs/my-run` "
                "(runs land in `{runs}`; shipped models live in `{ck}`).")


def how_to_train() -> str:
    return HOW_TO_TRAIN.format(runs=R.runs_root(), ck=R.checkpoints_root())


def engine_errors() -> tuple[type[BaseException], ...]:
    """Exceptions an engine call may raise on bad input or broken files."""
    return (EngineError, ValueError, KeyError, OSError, RuntimeError, IndexError, TypeError)


@contextmanager
def guarded(what: str):
    """Run an engine call; on failure show st.error (what failed, why, what to do) and stop the block."""
    try:
        yield
    except engine_errors() as e:
        st.error(f"{what} failed: {e}")
        raise Handled() from e


class Handled(Exception):
    """Raised after an error was shown, to skip the rest of a block (caught by ``section``)."""


@contextmanager
def section():
    """Swallow errors already reported by ``guarded`` so the rest of the page keeps rendering."""
    try:
        yield
    except Handled:
        pass


def pick_runs(key: str, *, multi: bool = False, dataset: str | None = None, max_selections: int | None = None,
              default_names: tuple[str, ...] = (), label: str = "Checkpoint",
              container=None) -> list[R.RunInfo]:
    """Pick run(s) from both roots; the choice is remembered across pages in session state."""
    where = container or st
    found = R.find_runs(dataset=dataset)
    if not found:
        where.info(f"No checkpoints{' for ' + dataset if dataset else ''} found. " + how_to_train())
        return []
    by_key = {r.key: r for r in found}
    memory = f"_picked_{key}"
    remembered = [k for k in st.session_state.get(memory, []) if k in by_key]
    if not remembered:
        healthy = [r for r in found if not r.problem]
        named = ([r.key for n in default_names for r in healthy if r.name == n]
                 or [r.key for n in default_names for r in healthy if r.variant == n])
        fallback = [r.key for r in found if not r.problem][:1] or [found[0].key]
        remembered = list(dict.fromkeys(named))[: max_selections or len(named)] or fallback
    keys = list(by_key)
    if multi:
        chosen = where.multiselect(label, keys, default=remembered, format_func=lambda k: by_key[k].label,
                                   max_selections=max_selections, key=f"w_{key}")
    else:
        one = where.selectbox(label, keys, index=keys.index(remembered[0]), format_func=lambda k: by_key[k].label,
                              key=f"w_{key}")
        chosen = [one] if one else []
    st.session_state[memory] = chosen
    return [by_key[k] for k in chosen]


def pick_dataset(key: str, container=None, only: tuple[str, ...] | None = None) -> str | None:
    """A dataset filter over the runs present (restricted to ``only``); None when there are none."""
    names = [d for d in R.datasets(R.find_runs()) if only is None or d in only]
    if not names:
        return None
    where = container or st
    memory = f"_dataset_{key}"
    prev = st.session_state.get(memory)
    idx = names.index(prev) if prev in names else 0
    choice = where.selectbox("Dataset", names, index=idx, key=f"w_ds_{key}")
    st.session_state[memory] = choice
    return choice


def load_model(run: R.RunInfo):
    """The run's model (cached), or None after an st.error that says what is wrong and what to do."""
    if run.problem and run.problem.startswith("no checkpoint"):
        st.error(f"{run.name}: {run.problem}. If it is still training, wait for its first epoch to finish; "
                 "otherwise pick another checkpoint.")
        return None
    try:
        with st.spinner(f"Loading {run.name} ..."):
            return state.load_model(str(run.path), run.mtime)
    except engine_errors() as e:
        st.error(f"Cannot load checkpoint {run.name}: {e}. Retrain it or pick another checkpoint.")
        return None


def feature_missing(what: str, module: str) -> None:
    st.info(f"{what} is not available yet: the engine module `engine.{module}` is missing or incomplete. "
            "The rest of the dashboard works without it.")


class StatusProgress:
    """An engine ``progress(done, total, what)`` callable drawn as an st.status label and progress bar."""

    REFRESH_S = 0.25                 # at most four bar updates a second (a build may report every item)

    def __init__(self, box):
        self.clock, self.box, self.bar = time.perf_counter, box, box.progress(0.0)
        self.what, self.start, self.first, self.shown = None, 0.0, 0, 0.0

    def __call__(self, done: int, total: int, what: str) -> None:
        now = self.clock()
        if what != self.what:
            self.what, self.start, self.first = what, now, done
            self.box.update(label=f"Building the data this page needs (one-off): {what.lower()} ...")
        elif now - self.shown < self.REFRESH_S and done < total:
            return
        self.shown = now
        self.bar.progress(min(1.0, done / total) if total else 1.0,
                          text=progress_text(done, total, what, now - self.start, done - self.first))


def data_for(run: R.RunInfo, splits: tuple[str, ...] = state.SPLITS):
    """The run's data for ``splits``; the first time in this process it is built inside an st.status
    whose progress bar the engine's builders feed (what, items done / total, rate, time left)."""
    cfg = run.config.get("data", {})
    if state.is_built(cfg, splits):
        return state.load_data(state.data_key(cfg), splits)
    which = " and ".join(splits)
    start = time.perf_counter()
    with st.status(f"Loading the {run.dataset} data ({which} split{'s' if len(splits) > 1 else ''}) ...",
                   expanded=True) as box:
        try:
            data = state.build_data(cfg, splits, StatusProgress(box))
        except engine_errors():
            box.update(label=f"Building the {run.dataset} data failed", state="error")
            raise
        box.update(label=f"{run.dataset} data ready ({which}; {time.perf_counter() - start:.3g} s)",
                   state="complete", expanded=False)
    return data
