"""Errors that the command line turns into one clear line (no stack trace)."""

from __future__ import annotations

from typing import Any


class RecsysError(Exception):
    """Base class: a problem with the user's input, config or data, not a bug."""


class ConfigError(RecsysError):
    """An unknown key, a value of the wrong type, or an unreadable config file."""


class InputError(RecsysError):
    """A missing input path or a stage's input that does not meet its contract."""


class DataQualityError(RecsysError):
    """An invariant on the data failed: counts that do not reconcile, a leak, a drift."""


def relax_hint(key: str, value: Any, *more: tuple[str, Any]) -> str:
    """The note an error that stops a run on a threshold ends with: the override(s) that let it pass.

    Args:
        key, value: a dotted config key and a value with which the data passes.
        more: further (key, value) pairs, when one setting alone cannot relax the check.

    Returns:
        ``"(to accept it: featurize.dq_max_null_rate.brand=1.0)"``; floats as their shortest
        exact text (give a rounded value), booleans as YAML's true/false.
    """
    settings = " ".join(f"{k}={_yaml_scalar(v)}" for k, v in ((key, value), *more))
    return f"(to accept it: {settings})"


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)
