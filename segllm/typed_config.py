"""Typed dataclass configs built from plain data (JSON, YAML, keyword overrides), checked.

One checker for the model config (``segllm.config``) and the training config
(``segllm.train.args``): an unknown key, a value of the wrong type or a ``Literal`` outside its
choices fails with a :class:`ConfigError` that names the full key path, before anything is
built. Lists are accepted for tuples (JSON and YAML have no tuples) and ints for floats. A
string is a number only in the one spelling PyYAML misreads as a string, an exponent without
a decimal point (``1e-3``); ``"0.5"`` is a string, so a quoted number fails at load rather than
at the first use. Floats must be finite (NaN and infinity are no setting).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

# What PyYAML (YAML 1.1) reads as a string although it is a number: no decimal point.
_YAML_STRING_FLOAT = re.compile(r"[-+]?[0-9]+[eE][-+]?[0-9]+")


class ConfigError(ValueError):
    """A config value that does not fit its field; the message names where it is."""


@dataclass(frozen=True)
class KeyPath:
    """Where a value sits, for messages.

    ``root`` is a file (``bad.yaml: optim.lr``) or, with ``dotted_root``, the first part of a
    dotted path (``config.lora.r``).
    """

    root: str
    keys: tuple[str, ...] = ()
    dotted_root: bool = False

    def child(self, key: str | int) -> KeyPath:
        return dataclasses.replace(self, keys=(*self.keys, str(key)))

    @property
    def key(self) -> str:
        """The dotted keys below the root."""
        return ".".join(self.keys)

    def __str__(self) -> str:
        if not self.keys:
            return self.root
        return f"{self.root}.{self.key}" if self.dotted_root else f"{self.root}: {self.key}"

    def unknown_message(self, unknown: list[str], known: list[str]) -> str:
        """The message for unknown keys of the mapping at this path."""
        if self.dotted_root:  # names relative to the path: "config.lora: ... ['rank']"
            return f"{self}: unknown field(s) {unknown}; known: {known}"
        names = [self.child(u).key for u in unknown]  # full keys after the file name
        return f"{self.root}: unknown key(s) {names}; known here: {known}"


def build_checked(cls: type, data: Any, path: KeyPath) -> Any:
    """Build dataclass ``cls`` from the mapping ``data``, every key and type checked."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    known = sorted(f.name for f in fields)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(path.unknown_message(unknown, known))
    kwargs = {name: coerce(hints[name], value, path.child(name)) for name, value in data.items()}
    missing = [f.name for f in fields if f.name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{path}: missing required key(s) {missing}")
    return cls(**kwargs)


def coerce(kind: Any, value: Any, path: KeyPath) -> Any:
    """``value`` checked against the type hint ``kind`` (and converted where the data format
    cannot say it: a list for a tuple, an int or numeric string for a float)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(args, value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(kind):
        return build_checked(kind, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        return [coerce(args[0], v, path.child(i)) for i, v in enumerate(value)]
    if origin is tuple:
        return _coerce_tuple(args, value, path)
    if origin is dict:
        return _coerce_dict(args, value, path)
    return _coerce_scalar(kind, value, path)


def _coerce_union(args: tuple, value: Any, path: KeyPath) -> Any:
    if value is None and type(None) in args:
        return None
    inner = [a for a in args if a is not type(None)]
    for kind in inner[:-1]:  # the first type that takes the value; the last one's error
        try:
            return coerce(kind, value, path)
        except ConfigError:
            pass
    return coerce(inner[-1], value, path)


def _coerce_tuple(args: tuple, value: Any, path: KeyPath) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
    if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
        return tuple(coerce(args[0], v, path.child(i)) for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{path}: expected a list of {len(args)} values")
    return tuple(coerce(a, v, path.child(i)) for i, (a, v) in enumerate(zip(args, value, strict=True)))


def _coerce_dict(args: tuple, value: Any, path: KeyPath) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
    if not args:
        return value
    key_kind, value_kind = args
    return {coerce(key_kind, k, path): coerce(value_kind, v, path.child(k)) for k, v in value.items()}


def _coerce_scalar(kind: Any, value: Any, path: KeyPath) -> Any:
    if kind is Any:
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, str) and _YAML_STRING_FLOAT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported field type {kind!r}")
