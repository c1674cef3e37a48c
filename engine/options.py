"""Command-line flags generated from the config schema (engine.config), for every command.

``add_setting_flags`` adds one flag per setting (the ``train`` parser adds them all); the shared
data, device and K flags of the other commands come from the same fields. No command logic here.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Iterable

from engine import config as C



def data_settings() -> tuple[str, ...]:
    """The settings that choose the data (the seed is each command's own flag)."""
    return tuple(n for n in C.settings() if n.startswith("data.") and n != "data.seed")


def train_settings() -> tuple[str, ...]:
    """Every setting with a flag: the ``train`` command's."""
    return tuple(n for n in C.settings() if C.flag_of(n) is not None)


def arg_type(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` from an engine.validate check (its ValueError becomes the flag's error)."""
    def parse(text: str) -> Any:
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = getattr(check, "__name__", "value")
    return parse


def dest_of(name: str) -> str:
    """The argparse dest of a setting's flag ('objective.N' -> 'negatives')."""
    return C.flag_of(name)[2:].replace("-", "_")


def flag_settings(names: Iterable[str] | None = None) -> dict[str, tuple[str, ...]]:
    """Each flag's dest and the settings it sets ('seed': ('data.seed', 'train.seed')); default: train's."""
    out: dict[str, tuple[str, ...]] = {}
    for name in train_settings() if names is None else names:
        out[dest_of(name)] = out.get(dest_of(name), ()) + (name,)
    return out


def add_setting_flags(p: argparse.ArgumentParser, names: Iterable[str] | None = None,
                      **defaults: Any) -> None:
    """One flag per setting in ``names`` (default: train's; a flag that sets several settings once),
    with the schema's help, check and default; ``defaults`` (by dest) replace the schema's."""
    fields, added = C.settings(), set()
    for name in train_settings() if names is None else names:
        f, flag = fields[name], C.flag_of(name)
        if flag in added:
            continue
        added.add(flag)
        dest, meta = dest_of(name), f.metadata
        default = defaults.get(dest, f.default)
        shown = "" if "default" in meta["help"] or default in (None, False) else f" (default {default})"
        kwargs: dict[str, Any] = {"dest": dest, "default": default, "help": meta["help"] + shown}
        if f.type in (bool, "bool"):
            action = argparse.BooleanOptionalAction if meta["default_for"] is not None else "store_true"
            p.add_argument(flag, action=action, **kwargs)
            continue
        check = meta["check"]
        if hasattr(check, "choices"):
            kwargs["choices"] = check.choices
        elif check is not None:
            kwargs["type"] = arg_type(check)
        p.add_argument(flag, **kwargs)


def add_data_args(p: argparse.ArgumentParser, **defaults: Any) -> None:
    """Flags that choose the data (shared by train and the evaluation commands)."""
    add_setting_flags(p, data_settings(), **defaults)


def add_device_arg(p: argparse.ArgumentParser) -> None:
    add_setting_flags(p, ("train.device",))


def add_K_arg(p: argparse.ArgumentParser, default: int | None, help: str) -> None:
    """--K with the schema's check; its default and help are the command's."""
    p.add_argument("--K", type=arg_type(C.settings()["objective.K"].metadata["check"]), default=default, help=help)


def data_config_from_args(a: argparse.Namespace, **values: Any) -> C.DataConfig:
    """The validated DataConfig the data flags of ``a`` describe; ``values`` (by field name) win."""
    cfg = C.DataConfig(**{**{n.split(".")[1]: getattr(a, dest_of(n)) for n in data_settings()}, **values})
    cfg.validate()
    return cfg


def overrides_from_args(a: argparse.Namespace, given: Iterable[str]) -> dict[str, Any]:
    """The settings (dotted names) the flags in ``given`` (dests) set, with their parsed values."""
    table = flag_settings()
    return {name: getattr(a, dest) for dest in given for name in table[dest]}


__all__ = ["add_setting_flags", "add_data_args", "add_device_arg", "add_K_arg", "arg_type", "data_config_from_args",
           "dest_of", "flag_settings", "overrides_from_args", "data_settings", "train_settings"]
