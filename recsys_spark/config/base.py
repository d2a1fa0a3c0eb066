"""What the config sections' checks share: bounds that name the key, ISO dates, and the check of
a value against its field's type (``from_dict`` and ``search.space`` use it)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import types
import typing
from typing import Any, Literal, Mapping

from recsys_spark import schema
from recsys_spark.errors import ConfigError

# Every range and consistency check of a section lives in its dataclass's __post_init__, so that a
# mistake in any stage's settings stops `recsys <any stage>` before Spark starts.
EVENT_TYPES = tuple(schema.EVENT_TYPES)


def _at_least(section: str, values: Any, minimums: Mapping[str, float]) -> None:
    """Raise ConfigError naming the first ``section.key`` below its minimum."""
    for key, minimum in minimums.items():
        if getattr(values, key) < minimum:
            raise ConfigError(f"{section}.{key} must be >= {minimum}, got {getattr(values, key)}")


def _bounded_waits(section: str, values: Any, keys: tuple[str, ...]) -> None:
    """Raise ConfigError naming the first ``section.key`` of a wait that is not > 0."""
    for key in keys:
        if not getattr(values, key) > 0:
            raise ConfigError(f"{section}.{key} must be > 0 (every wait has a bound), got {getattr(values, key)}")


def iso_date(key: str, value: str) -> dt.date | None:
    """``value`` as a date ("" -> None). Raises: ConfigError naming ``key``."""
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not an ISO date (YYYY-MM-DD)") from None

def _resolve(cls: type, f: dataclasses.Field) -> Any:
    return typing.get_type_hints(cls)[f.name]


def _check(key: str, value: Any, hint: Any) -> Any:
    if hint is Any:  # checked by its section (search.space: parse_space)
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(key, value, inner[0])
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_describe(value)}")
        return [_check(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_describe(value)}")
        return {
            _check(f"{key} (a key)", k, args[0]): _check(f"{key}.{k}", v, args[1]) for k, v in value.items()
        }
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as text
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
        return float(value)
    if hint is str:
        # YAML reads `2019-10-01` as a date and `4` as an int; a string key takes their text.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if hasattr(value, "isoformat"):
            return value.isoformat()
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint!r}")  # a programming error, named anyway


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"
