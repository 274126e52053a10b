"""Mappings to typed config dataclasses: keys checked with a "did you mean", values checked against field types.

`build_section(RunConfig, {"search": {"num_candidates": 6}}, "")` builds the dataclass tree from
what YAML gave; an unknown key names the nearest valid one, a wrong type names the key and the
type expected, and a value outside a `Literal[...]` lists the allowed ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal

from .errors import ConfigError


def did_you_mean(value: Any, allowed: Iterable[str]) -> str:
    """'; did you mean X? (choose from ...)' for an unknown value."""
    allowed = list(allowed)
    guess = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.5)
    hint = f"; did you mean {guess[0]!r}?" if guess else ""
    return f"{hint} (choose from {', '.join(allowed)})"


def check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Raise a ConfigError naming `key` when `value` (or any item of a list value) is not allowed."""
    for item in value if isinstance(value, list) else [value]:
        if item not in allowed:
            raise ConfigError(f"{key}: unknown value {item!r}{did_you_mean(item, allowed)}")


def build_section(cls: type, raw: Any, prefix: str, root: type | None = None) -> Any:
    """A config dataclass from a mapping: keys checked (with "did you mean"), values coerced to the field types.

    Args:
        cls: the dataclass to build; raw: its mapping (nested mappings for nested sections).
        prefix: the dotted key of `cls` ("search."), used in error messages.
        root: the top dataclass whose keys a "did you mean" may suggest (default: cls).
    """
    root = root or cls
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(raw).__name__}")
    types_ = typing.get_type_hints(cls)
    paths = {f.name for f in dataclasses.fields(cls) if f.metadata.get("path")}
    kwargs = {}
    for name, value in raw.items():
        check_key(cls, str(name), prefix.rstrip("."), root)
        ftype = types_[name]
        if name in paths and value is not None and not isinstance(value, str):
            raise ConfigError(f"{prefix}{name}: expected a path, got the {type(value).__name__} {value!r} (YAML reads "
                              "0755 as the octal number 493 and 1e3 as a float: quote it)")
        if dataclasses.is_dataclass(ftype):
            kwargs[name] = build_section(ftype, value or {}, prefix + name + ".", root)
        else:
            kwargs[name] = _coerce(value, ftype, prefix + name)
    return cls(**kwargs)


def check_key(cls: type, name: str, section: str, root: type) -> None:
    """Raise a ConfigError with the nearest valid key when `name` is not a field of `cls`."""
    names = [f.name for f in dataclasses.fields(cls)]
    if name in names:
        return
    full = f"{section}.{name}" if section else name
    valid = [f"{section}.{n}" if section else n for n in names]
    guess = difflib.get_close_matches(full, valid + all_keys(root), n=1, cutoff=0.6)
    hint = f"; did you mean {guess[0]!r}?" if guess else f"; valid keys here: {', '.join(valid)}"
    raise ConfigError(f"unknown config key {full!r}{hint}")


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config dataclass tree."""
    keys = []
    types_ = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(types_[f.name]):
            keys.extend(all_keys(types_[f.name], prefix + f.name + "."))
        else:
            keys.append(prefix + f.name)
    return keys


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against type `tp`, converting the harmless cases (int -> float, scalar -> str)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        check_choice(key, value, args)
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads `1e-7` as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected float, got {value!r}")
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected str, got {value!r}")
    return value


# ---------------------------------------------------------------------------- value checks


def choices_of(cls: type, name: str) -> tuple[str, ...] | None:
    """The allowed values of a field (its Literal type, list[Literal], or metadata["choices"]: a tuple, or a
    function returning one when the list can grow, as the benchmark registry can), else None."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if "choices" in f.metadata:
        choices = f.metadata["choices"]
        return tuple(choices() if callable(choices) else choices)
    tp = typing.get_type_hints(cls)[name]
    if typing.get_origin(tp) is list:
        tp = typing.get_args(tp)[0]
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def check_choices(cfg: Any, prefix: str = "") -> None:
    """check_choice on every enumerated field of a config tree."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_choices(value, f"{prefix}{f.name}.")
            continue
        allowed = choices_of(type(cfg), f.name)
        if allowed is not None:
            check_choice(prefix + f.name, value, allowed)


def check_finite(value: Any, key: str) -> None:
    """Raise a ConfigError naming the key of the first float in a config tree that is nan or infinite.

    The one rule for every float setting, wherever it sits: a field, a list item (train.loss_weights[0]),
    a mapping value (loop.guards.recall) or a pass-through mapping (train.trl_args.max_grad_norm). No
    setting of csr has a meaning for nan or inf, and a library given one trains or samples garbage.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            check_finite(getattr(value, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(value, dict):
        for name, item in value.items():
            check_finite(item, f"{key}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_finite(item, f"{key}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")


def check_positive(key: str, section: Any, names: tuple[str, ...]) -> None:
    """Raise a ConfigError naming `key.name` for the first of `names` that is not > 0."""
    for name in names:
        value = getattr(section, name)
        if value <= 0:
            raise ConfigError(f"{key}.{name} must be > 0, got {value}")


def check_range(key: str, name: str, value: float, low: float, high: float) -> None:
    """Raise a ConfigError naming `key.name` when value is outside [low, high]."""
    if not low <= value <= high:
        raise ConfigError(f"{key}.{name} must be between {low:g} and {high:g}, got {value}")
