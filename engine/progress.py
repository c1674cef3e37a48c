"""Progress of long data builds, reported through one callable: ``progress(done, total, what)``.

Builders (synthetic birds, SVHN crops, image features) call it as items finish, with ``what``
naming the stage ("Drawing the synthetic birds"); a new ``what`` starts a new stage. The CLI turns
the calls into tqdm bars, the dashboard into ``st.status`` / ``st.progress``. Builders accept
``progress=True`` (tqdm on stderr, the terminal default), ``False`` (silent) or a callable.
"""
from __future__ import annotations

from typing import Callable, Union

from tqdm import tqdm

Progress = Callable[[int, int, str], None]
ProgressArg = Union[Progress, bool, None]


class TqdmProgress:
    """One tqdm bar per stage: a new ``what`` closes the previous bar and opens the next."""

    def __init__(self, unit: str = "it"):
        self.unit, self.what, self.bar = unit, None, None

    def __call__(self, done: int, total: int, what: str) -> None:
        if what != self.what or self.bar is None or self.bar.total != total:
            self.close()
            self.what, self.bar = what, tqdm(total=total, desc=what, unit=self.unit)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None


def _silent(done: int, total: int, what: str) -> None:
    """Report nothing."""


def reporter(progress: ProgressArg) -> Progress:
    """The callable for a builder's ``progress`` argument: itself, tqdm bars (True) or silence."""
    if callable(progress):
        return progress
    return TqdmProgress() if progress else _silent
