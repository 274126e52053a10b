"""Loading the typed configuration: defaults, YAML, `section.key=value` overrides, checks, saving.

Precedence is dataclass default < YAML file < command-line overrides. Values are parsed as YAML (`3`, `0.9`,
`true`, `[q_proj,v_proj]`) and checked against the field's type (the schema/ package). Unknown keys are errors
that suggest the nearest valid key; every allowed value and rule between fields is checked (`validate`: the
schema's rules, then the benchmark registry's) before the config is returned. The resolved config is written
beside each stage's outputs (`save_config`), so every result can be traced to the exact settings behind it.

    cfg = load_config("configs/toy.yaml", ["search.num_candidates=6", "reward.lam=0.5"])
    dev = with_overrides(cfg, ["eval.num_images=100"])
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
import typing
from pathlib import Path
from typing import Any

import yaml

from .coerce import build_section, check_key, choices_of
from .errors import ConfigError
from .schema import (
    CurateConfig,
    DataConfig,
    EvalConfig,
    LoopConfig,
    ModelConfig,
    RewardConfig,
    RunConfig,
    SearchConfig,
    TrainConfig,
    VLLMConfig,
)

__all__ = ["ConfigError", "CurateConfig", "DataConfig", "EvalConfig", "LoopConfig", "ModelConfig", "RewardConfig",
           "RunConfig", "SearchConfig", "TrainConfig", "VLLMConfig", "changed_settings", "check_reusable", "describe",
           "field_docs", "keys", "load_config", "reads", "save_config", "to_dict", "with_overrides"]


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Build and validate a RunConfig from defaults, an optional YAML file and `section.key=value` overrides.

    Raises:
        ConfigError: unknown key, wrong type, value not allowed, or a broken rule between fields.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides:
        _apply_override(raw, item)
    return validate(build_section(RunConfig, raw, prefix=""))


def validate(cfg: RunConfig, loop: bool = False) -> RunConfig:
    """Every rule of a config: the schema's (`RunConfig.validate`, or `validate_loop` for `csr loop`), then those of
    the registries the schema does not read: the scorer's (reward.scorer) and the benchmarks' (task and metric
    names, the annotations a task needs)."""
    from .benchmarks.registry import check_config
    from .scorer import check_kind

    cfg.validate_loop() if loop else cfg.validate()
    check_kind(cfg.reward.scorer)
    check_config(cfg, loop)
    return cfg


def with_overrides(cfg: RunConfig, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    """A new, validated RunConfig: cfg with `section.key=value` overrides applied (cfg is unchanged)."""
    raw = to_dict(cfg)
    for item in overrides:
        _apply_override(raw, item)
    return validate(build_section(RunConfig, raw, prefix=""))


def save_config(cfg: RunConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(path)
    return path


def check_reusable(out: str | Path, cfg: RunConfig, keys: tuple[str, ...]) -> None:
    """Refuse to reuse a finished stage directory whose saved config.yaml differs from cfg at `keys`.

    keys are dotted (`model.path`, `eval`); a stage calls this before skipping finished work, so
    `csr eval --model B` into a directory that holds model A's metrics is an error, not A's numbers.
    """
    differences = _differences(Path(out) / "config.yaml", cfg)
    differ = [k for k in keys if any(_under(key, (k,)) for key in differences)]
    if differ:
        raise ConfigError(f"out: {out} holds results of a different config ({', '.join(differ)} differ); "
                          "use overwrite=true or another out")


def changed_settings(saved: str | Path, cfg: RunConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """The settings in which cfg differs from the config saved at `saved`, as "key: saved -> now" lines.

    Keys are dotted leaves (`train.beta`); a key named in ignore, or under a section named there, is left out.
    """
    return [f"{key}: {old!r} -> {new!r}" for key, (old, new) in _differences(Path(saved), cfg).items()
            if not _under(key, ignore)]


def _differences(saved: Path, cfg: RunConfig) -> dict[str, tuple[Any, Any]]:
    """{dotted leaf key: (saved value, cfg's value)} where they differ; {} when there is no saved file.
    A key the saved file lacks (an older version wrote it) counts as its default."""
    if not saved.is_file():
        return {}
    old = yaml.safe_load(saved.read_text()) or {}
    for name, default in _plain(RunConfig()).items():  # fields of the top level and of each section
        if isinstance(default, dict) and isinstance(old.get(name), dict):
            old[name] = default | old[name]
        else:
            old.setdefault(name, default)
    old, new = leaves(old), leaves(_plain(cfg))
    return {key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key)}


def _under(key: str, names: tuple[str, ...]) -> bool:
    """Whether the dotted key is one of names or lies under one of them (`eval.num_images` under `eval`)."""
    return any(key == name or key.startswith(name + ".") for name in names)


def _plain(cfg: RunConfig) -> dict[str, Any]:
    """cfg as config.yaml reads back (tuples as lists)."""
    return yaml.safe_load(yaml.safe_dump(to_dict(cfg)))


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of every non-dict value (and every empty dict) in a nested dict."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat |= leaves(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts and lists (what config.yaml holds)."""
    return dataclasses.asdict(cfg)


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string literal right under each field)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def keys(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, Any, tuple[str, ...], str]]:
    """(dotted key, default, allowed values or (), docstring) of every leaf key of the config, in schema order."""
    rows = []
    docs = field_docs(cls)
    types_ = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(types_[f.name]):
            rows.extend(keys(types_[f.name], prefix + f.name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((prefix + f.name, default, tuple(choices_of(cls, f.name) or ()), docs.get(f.name, "")))
    return rows


def shown(value: Any) -> str:
    """A default as a user writes it on the command line or in YAML (JSON is YAML): false, null, ["."], "auto"."""
    return json.dumps(value, ensure_ascii=False)


def reads(key: str, only: tuple[str, ...] | None) -> bool:
    """Whether a dotted key is among `only` (section names, top-level names or dotted keys); None = all keys."""
    return only is None or _under(key, only)


HELP_WIDTH = 119
"""`csr <stage> --help` wraps each key's entry at this width (continuation lines indented)."""


def describe(only: tuple[str, ...] | None = None) -> list[str]:
    """The lines of every config key (those under `only`, default all): its default, allowed values and docstring,
    wrapped at HELP_WIDTH."""
    lines: list[str] = []
    for key, default, allowed, doc in keys():
        if reads(key, only):
            entry = f"  {key}={shown(default)}" + (f" ({'|'.join(allowed)})" if allowed else "") + f"  {doc}"
            lines += textwrap.wrap(entry, HELP_WIDTH, initial_indent="", subsequent_indent="      ",
                                   drop_whitespace=True)
    return lines


# ---------------------------------------------------------------------------- internals


def _apply_override(raw: dict[str, Any], item: str) -> None:
    """Set one `section.key=value` (value parsed as YAML) in the raw config tree, checking the key."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    cls: Any = RunConfig
    node = raw
    for depth, name in enumerate(parts):
        check_key(cls, name, ".".join(parts[:depth]), RunConfig)
        if depth == len(parts) - 1:
            node[name] = value
            return
        cls = typing.get_type_hints(cls)[name]
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"{'.'.join(parts[: depth + 1])} is a value, not a section")
        child = node.get(name)
        node = node.setdefault(name, {}) if child is None else child
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parts[: depth + 1])}: expected a mapping, got {type(node).__name__}")
