"""Config dataclasses from and to plain data and TOML: the generic part of :mod:`gossipfl.config`
(which re-exports what is public here). Unknown keys are errors; every value is type-checked."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

SECAGG_COMPRESSION = ("none", "randk", "int8", "int4")
SECAGG_COMPRESSION_REFUSED = (
    "with secagg, compression.kind must be none, randk, int8 or int4 (random-k on a coordinate "
    "set the federation shares each round, or levels at a public step, which masks can sum); "
    "fp16 and topk pick values or coordinates per member, which masked sums cannot combine")


def check_secagg_compression(secagg: Any, kind: str) -> None:
    """Refuse a compression kind that secure aggregation cannot sum, consensus deltas and
    levels of one's own without the quantised kinds they refine (or more levels than the
    kind's), first-round deltas without compressed secure aggregation, and coarse consensus
    rounds without consensus deltas or of other levels than 1, 7, 31 (ConfigError).
    ``secagg``: a :class:`gossipfl.config.SecAggConfig` (which imports this module)."""
    on = secagg.enabled
    if on and kind not in SECAGG_COMPRESSION:
        raise ConfigError(SECAGG_COMPRESSION_REFUSED)
    if secagg.first_deltas and not (on and kind != "none"):
        raise ConfigError("secagg.first_deltas needs [secagg] enabled = true and a "
                          "[compression] kind (randk, int8 or int4)")
    for name in ("consensus_deltas", "delta_levels"):
        if getattr(secagg, name) and not (on and kind in ("int8", "int4")):
            raise ConfigError(f"secagg.{name} needs [secagg] enabled = true and "
                              "[compression] kind = \"int8\" or \"int4\"")
    most = {"int8": 127, "int4": 7}.get(kind, 0)
    if not 0 <= secagg.delta_levels <= most:
        raise ConfigError(f"secagg.delta_levels must be in 0..{most} with {kind} (0: the "
                          f"kind's own {most})")
    coarse = secagg.coarse_consensus
    if coarse and not secagg.consensus_deltas:
        raise ConfigError("secagg.coarse_consensus needs secagg.consensus_deltas = true")
    if len(coarse) > 16 or any(not isinstance(n, int) or n not in (1, 7, 31) for n in coarse):
        raise ConfigError("secagg.coarse_consensus must be at most 16 levels, each 1, 7 or 31 "
                          f"(the narrowing tiers), got {list(coarse)}")


T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value that breaks a rule; the message names the key."""


#: Field metadata: what TOML says for a field whose value is None (TOML has no null, and
#: :func:`to_dict` would otherwise leave the key out, which means the default on reading back).
TOML_NONE = "toml_none"


# -- building dataclasses from plain data ------------------------------------------------------


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _convert(non_none[0], value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table")
        (key_type, item_type) = typing.get_args(tp)
        return {_convert(key_type, k, f"{where} key"): _convert(item_type, v, f"{where}.{k}")
                for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list")
        (item_type, _) = typing.get_args(tp)
        return tuple(_convert(item_type, v, f"{where}[]") for v in value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build the dataclass ``cls`` from nested plain data, refusing unknown keys."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown key(s) {', '.join(prefix + k for k in unknown)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _convert(hints[name], value, key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(f"{where or cls.__name__}: {error}") from None


def to_dict(obj: Any) -> Any:
    """Plain data (TOML/JSON-ready) from a config dataclass; None values are left out, but for
    fields that say what TOML writes for None (:data:`TOML_NONE`)."""
    if dataclasses.is_dataclass(obj):
        plain = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None:
                if TOML_NONE not in f.metadata:
                    continue
                value = f.metadata[TOML_NONE]
            plain[f.name] = to_dict(value)
        return plain
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: {error}") from None


def dump_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for the plain data :func:`to_dict` produces."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        lines.append(f"\n[{_toml_key(name)}]")
        for key, value in table.items():
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    """A bare key when TOML allows one, else a quoted key."""
    if key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key):
        return key
    return _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + "".join(_toml_char(c) for c in value) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {type(value).__name__} to TOML")


def _toml_char(char: str) -> str:
    if char in ('"', "\\"):
        return "\\" + char
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"\\u{ord(char):04x}"
    return char
