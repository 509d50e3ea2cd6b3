"""How settings are checked: a plain dict (a Hydra config as a container) built into frozen dataclasses field by
field, each value checked against its annotation, and the bad one named by its dotted key (``ConfigError``)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

from lords.errors import ConfigError


def _fail(key: str, value, why: str):
    raise ConfigError(f"{key}={value!r} {why}")


def _choice(key: str, value, choices):
    if value not in choices:
        _fail(key, value, f"is not one of {tuple(choices)}")


def _positive(key: str, value, allow_zero=False):
    if value < 0 or (value == 0 and not allow_zero):
        _fail(key, value, f"must be {'non-negative' if allow_zero else 'positive'}")


def _is_instance(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_is_instance(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    return isinstance(value, tp)


def _build(cls, data, key: str):
    """``cls(**data)`` with unknown keys, missing keys and wrong types reported by dotted key."""
    if not isinstance(data, dict):
        _fail(key, data, f"must be a mapping of {cls.__name__} fields")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key (known: {sorted(fields)})")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{key}.{name}" if key else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{sub}: missing key")
            continue
        value, tp = data[name], hints[name]
        nested = [t for t in (typing.get_args(tp) or (tp,)) if dataclasses.is_dataclass(t)]
        if nested and isinstance(value, dict):
            value = _build(nested[0], value, sub)
        elif not _is_instance(value, tp):
            _fail(sub, value, f"has the wrong type (expected {tp})")
        if typing.get_origin(tp) is tuple or (isinstance(value, list)):
            value = tuple(value)
        if tp is float and isinstance(value, int):
            value = float(value) if name != "bits" else value
        kwargs[name] = value
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        obj.check(key)
    return obj
