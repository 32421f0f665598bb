"""Dotted-key overrides on frozen dataclasses, each value converted to its field's type.

    overlay(cfg, {"finetune.epochs": 2, "data.split_sizes": [80, 20, 20]})

What `vitlib.config` applies to its profiles (`--set`, papermill's OVERRIDES): generic over any
dataclass; which values are in range is `vitlib.config.validate`'s job.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import types
import typing
from typing import Any

from vitlib.errors import ConfigError

__all__ = ["check_types", "overlay", "show"]


def overlay(base: Any, changes: dict[str, Any]) -> Any:
    """`base` (a frozen dataclass) with dotted-key `changes` applied, each converted to its field's type.

    int fields take integers (not bools) and integral floats (2.0 -> 2, as JSON may give);
    float fields take integers or floats (as floats); bool fields only bools; str fields only
    strings; `X | None` also None; tuple fields lists or tuples of their items (JSON and
    papermill give lists), of the right length; dict fields dicts with string keys. A wrong
    type, an unknown key or a whole section is a ConfigError. Ranges are `validate`'s job.
    """
    cfg = base
    for key, value in changes.items():
        cfg = _replace_dotted(cfg, key.split("."), value, key)
    return cfg


def _replace_dotted(obj: Any, parts: list[str], value: Any, key: str) -> Any:
    names = [f.name for f in dataclasses.fields(obj)]
    head, rest = parts[0], parts[1:]
    if head not in names:
        raise ConfigError(f"unknown setting {key!r}: {type(obj).__name__} has {names}")
    current = getattr(obj, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"unknown setting {key!r}: {head!r} has no sub-settings")
        value = _replace_dotted(current, rest, value, key)
    elif dataclasses.is_dataclass(current):
        raise ConfigError(f"setting {key!r} is a section; set one of its fields, e.g. {key}.<name>")
    else:
        value = _typed(value, _hints(type(obj))[head], key)
    return dataclasses.replace(obj, **{head: value})


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # the annotations are strings (__future__ annotations)


def _typed(value: Any, hint: Any, key: str) -> Any:
    """`value` converted to type `hint`, or a ConfigError naming `key` and the type."""
    try:
        return _convert(value, hint)
    except TypeError:
        shown = f"{show(value)} ({type(value).__name__})"
        raise ConfigError(f"{key}: expected {_describe(hint)}, got {shown}") from None


def _convert(value: Any, hint: Any) -> Any:
    """`value` as type `hint` (the rules in `overlay`); TypeError if it is not one."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = (a for a in args if a is not type(None))
        return _convert(value, inner)
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is bool and isinstance(value, bool) or hint is str and isinstance(value, str):
        return value
    if hint is int and real and (isinstance(value, numbers.Integral) or float(value).is_integer()):
        return int(value)
    if hint is float and real:
        return float(value)
    if origin is tuple and isinstance(value, (list, tuple)):
        items = args[:1] * len(value) if args[-1:] == (Ellipsis,) else args
        if len(items) == len(value):
            return tuple(_convert(v, h) for v, h in zip(value, items))
    if origin is dict and isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return dict(value)
    raise TypeError(hint)


def _describe(hint: Any) -> str:
    """What type `hint` accepts, in words: "a list of 3 integers"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    words = {bool: ("a bool", "bools"), int: ("an integer", "integers")}
    words |= {float: ("a number", "numbers"), str: ("a string", "strings")}
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) if a is not type(None) else "None" for a in args)
    if origin is tuple:
        count = "" if args[-1:] == (Ellipsis,) else f"{len(args)} "
        return f"a list of {count}{words.get(args[0], ('', 'items'))[1]}"
    if origin is dict:
        return "a dict with string keys"
    return words[hint][0] if hint in words else f"a {getattr(hint, '__name__', hint)}"


def show(value: Any) -> str:
    """repr(value) on one line."""
    return " ".join(repr(value).split()) if not isinstance(value, str) else repr(value)


def check_types(obj: Any, prefix: str) -> None:
    """Every field of dataclass `obj` (and of its sections) has its annotated type."""
    for name, hint in _hints(type(obj)).items():
        value, key = getattr(obj, name), f"{prefix}{name}"
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, hint):
                raise ConfigError(f"{key}: expected a {hint.__name__}, got {show(value)}")
            check_types(value, f"{key}.")
        else:
            _typed(value, hint, key)
