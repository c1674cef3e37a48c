"""Checks of single setting values, shared by the config schema and the command-line flags.

Each check takes a value (or the text of a flag), returns the value it stands for and raises
ValueError with a message such as "must be a positive integer, got 0".
"""
from __future__ import annotations

import math
from typing import Any, Callable

from engine.errors import EngineError
from engine.registry import parse_variant, variant_name

DEVICES = ("auto", "cpu", "cuda", "mps")


def _number(kind: type, value: Any):
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    return value


def integer(value: Any) -> int:
    return _number(int, value)


def positive_int(value: Any) -> int:
    v = _number(int, value)
    if v < 1:
        raise ValueError(f"must be a positive integer, got {value}")
    return v


def nonnegative_int(value: Any) -> int:
    v = _number(int, value)
    if v < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return v


def fraction(value: Any) -> float:
    v = _number(float, value)
    if not 0 < v <= 1:
        raise ValueError(f"must be in (0, 1], got {value}")
    return v


def gamma_value(value: Any) -> float:
    return _above_zero(value, "'inf' for the baseline")


def positive_float(value: Any) -> float:
    v = _number(float, value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"must be a finite number > 0, got {value}")
    return v


def nonnegative_float(value: Any) -> float:
    v = _number(float, value)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"must be a finite number >= 0, got {value}")
    return v


def positive_or_inf(value: Any) -> float:
    return _above_zero(value, "'inf' for never")


def _above_zero(value: Any, inf_means: str) -> float:
    """A number > 0, where inf is allowed and means ``inf_means``."""
    v = _number(float, value)
    if not v > 0:
        raise ValueError(f"must be > 0 (or {inf_means}), got {value}")
    return v


def likelihood_weights(value: Any) -> str:
    """Comma-separated finite weights > 0, one per modality ("0.025,5"); returned as written."""
    parts = [p.strip() for p in str(value).split(",")]
    try:
        weights = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"must be numbers separated by commas, one per modality (e.g. 0.025,5), got {value!r}") from None
    if len(weights) < 2 or not all(math.isfinite(w) and w > 0 for w in weights):
        raise ValueError(f"must be two or more finite numbers > 0 separated by commas, got {value!r}")
    return ",".join(parts)


def variant(value: Any) -> str:
    """A variant name in the paper's spelling ('ci-mmvae' -> 'cI-MMVAE')."""
    try:
        return variant_name(*parse_variant(str(value)))
    except EngineError as e:
        raise ValueError(str(e)) from None


def one_of(choices: tuple) -> Callable[[Any], Any]:
    """A check that accepts exactly ``choices``."""
    def check(value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value

    check.choices = choices
    return check
