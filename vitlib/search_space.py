"""What a sweep sweeps: a grid of settings or a search range per setting, checked like --set.

    space = parse_space("smoke", grid=["finetune.lr=1e-3,3e-3", "finetune.epochs=1,2"])
    space.points()   # [{"finetune.lr": 0.001, "finetune.epochs": 1}, ...], 4 of them
    space = parse_space("cpu", search=["finetune.lr=log:1e-5:1e-2"], trials=8)

Any dotted key of `vitlib.config` can be swept; every value (a search's bounds and middle) is
checked by `get_config` on the profile before a trial runs, so a bad key or value is one
ConfigError line naming it. `vitlib.sweep` runs the trials.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vitlib.config import get_config
from vitlib.errors import ConfigError

__all__ = ["KINDS", "Range", "Space", "check_space", "parse_space"]

KINDS = ("log", "float", "int")  # --search KEY=KIND:LOW:HIGH


@dataclass(frozen=True)
class Range:
    """A searched setting: `kind` "log" (log-uniform number), "float" or "int" in [low, high]."""

    kind: str
    low: float
    high: float


@dataclass(frozen=True)
class Space:
    """What a sweep sweeps: a grid (every combination, once) or a TPE search of `trials`."""

    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    search: dict[str, Range] = field(default_factory=dict)
    trials: int | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-ready, stored with the study so that a worker with other settings is refused."""
        search = {k: [r.kind, r.low, r.high] for k, r in self.search.items()}
        return {"grid": {k: list(v) for k, v in self.grid.items()}, "search": search,
                "trials": self.trials}  # fmt: skip

    def points(self) -> list[dict[str, Any]]:
        """Every grid combination, the first key varying slowest."""
        points: list[dict[str, Any]] = [{}]
        for key, values in self.grid.items():
            points = [{**p, key: v} for p in points for v in values]
        return points if self.grid else []


# --------------------------------------------------------------------------------------------
# The space: parsed and checked like --set values
# --------------------------------------------------------------------------------------------


def parse_space(
    profile: str,
    *,
    grid: Sequence[str] = (),
    search: Sequence[str] = (),
    trials: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Space:
    """A Space from command-line items: grid "finetune.lr=1e-4,3e-4" (values read as JSON, else
    text) and search "finetune.lr=log:1e-5:1e-2" (KIND:LOW:HIGH, KIND one of KINDS), with
    `trials` for a search. Every value is checked by `get_config` on `profile` as a --set value
    is: a ConfigError (a ValueError) names the key, the value and what is allowed."""
    values = {}
    for item in grid:
        key, text = _split(item, "--grid", "KEY=V1,V2,...")
        values[key] = tuple(_json(v) for v in text.split(","))
    ranges = {}
    for item in search:
        key, text = _split(item, "--search", "KEY=KIND:LOW:HIGH, e.g. finetune.lr=log:1e-5:1e-2")
        ranges[key] = _range(key, text)
    return check_space(profile, Space(values, ranges, trials), overrides)


def check_space(profile: str, space: Space, overrides: Mapping[str, Any] | None = None) -> Space:
    """`space` itself when it is a grid or a search (not both), of distinct keys, whose every
    value `get_config(profile, ...)` accepts; else a ConfigError saying what to pass."""
    if bool(space.grid) == bool(space.search):
        raise ConfigError(
            "a sweep needs --grid KEY=V1,V2,... or --search KEY=KIND:LOW:HIGH, not both"
        )
    if space.search and (space.trials is None or space.trials < 1):
        raise ConfigError(f"--search needs --trials N (N >= 1), got {space.trials}")
    if space.grid and space.trials is not None:
        raise ConfigError("--trials is for --search; a grid runs each of its points once")
    base = dict(overrides or {})
    for key, values in space.grid.items():
        if len(set(map(json.dumps, values))) != len(values):
            raise ConfigError(f"--grid {key}: expected distinct values, got {list(values)}")
        for value in values:
            if not isinstance(value, (bool, int, float, str)) and value is not None:
                raise ConfigError(f"--grid {key}: expected numbers, text, true/false or null, "
                                  f"got {value!r}")  # fmt: skip
            get_config(profile, {**base, key: value})
    for key, r in space.search.items():
        middle = math.sqrt(r.low * r.high) if r.kind == "log" else (r.low + r.high) / 2
        for value in (r.low, r.high) if r.kind == "int" else (r.low, middle, r.high):
            try:
                get_config(profile, {**base, key: int(value) if r.kind == "int" else value})
            except ConfigError as exc:
                hint = (
                    "; an integer setting is searched with int:LOW:HIGH" if r.kind != "int" else ""
                )
                raise ConfigError(
                    f"--search {key}={r.kind}:{r.low:g}:{r.high:g}: {exc}{hint}"
                ) from None
    return space


def _split(item: str, option: str, expected: str) -> tuple[str, str]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip() or not text:
        raise ConfigError(f"{option} expects {expected}, got {item!r}")
    return key.strip(), text


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _range(key: str, text: str) -> Range:
    parts = text.split(":")
    expected = f"--search {key}: expected KIND:LOW:HIGH with KIND one of {list(KINDS)}"
    if len(parts) != 3 or parts[0] not in KINDS:
        raise ConfigError(f"{expected}, got {text!r}")
    try:
        low, high = float(parts[1]), float(parts[2])
    except ValueError:
        raise ConfigError(f"{expected} and LOW, HIGH numbers, got {text!r}") from None
    if not low < high or (parts[0] == "log" and low <= 0):
        raise ConfigError(f"{expected}, LOW < HIGH (and LOW > 0 for log), got {text!r}")
    if parts[0] == "int" and not (low.is_integer() and high.is_integer()):
        raise ConfigError(f"{expected} and whole LOW, HIGH for int, got {text!r}")
    return Range(parts[0], low, high)
