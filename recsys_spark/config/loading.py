"""Building a :class:`Config` from the defaults, a YAML profile and dotted overrides."""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from recsys_spark.config.base import _check, _describe, _resolve
from recsys_spark.config.root import Config, check_search
from recsys_spark.errors import ConfigError


def load_config(config_path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Build a :class:`Config` from defaults, an optional YAML profile and dotted overrides.

    Args:
        config_path: YAML file; ``extends: other.yaml`` (relative to it) is followed first.
        overrides: ``["train.epochs=3", "spark.master=local[4]"]``; values are YAML scalars.
            ``section.key.entry=value`` sets one entry of a mapping and keeps its others
            (``featurize.dq_max_null_rate.brand=1.0``); everything after the key is the entry's
            name, dots included (``spark.conf.spark.executor.memory=4g``).

    Raises:
        ConfigError: unknown key, wrong type, bad override syntax, unreadable file.
    """
    merged: dict[str, Any] = {}
    if config_path is not None:
        merged = _read_layered_yaml(Path(config_path), seen=())
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        section, _, rest = key.strip().partition(".")
        name, dot, entry = rest.partition(".")
        if not section or not name or (dot and not entry):
            raise ConfigError(f"override key {key!r} must be section.key (e.g. train.epochs)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, ValueError):  # YAML reads 2019-13-01 as a date and fails: keep the text
            value = raw
        merged.setdefault(section, {})
        if not isinstance(merged[section], dict):
            raise ConfigError(f"section {section!r} must be a mapping")
        if entry:
            # One entry of a mapping; the rest of it stays as the profile (or the default) has it.
            value = {**_mapping_to_extend(section, name, merged[section], key.strip()), entry: value}
        merged[section][name] = value
    cfg = from_dict(merged)
    check_search(cfg)
    return cfg



def _mapping_to_extend(section: str, name: str, values: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The mapping an override ``section.name.<entry>=value`` adds its entry to: the one set so
    far (profile, earlier override), else the default.

    Raises:
        ConfigError: an unknown section or key, or ``section.name`` is not a mapping.
    """
    hint = _field_type(section, name)
    if typing.get_origin(hint) is not dict:
        raise ConfigError(f"override key {key!r}: {section}.{name} is not a mapping, so it has no entries "
                          f"(set it as {section}.{name}=value)")
    if name not in values:
        return getattr(_section_class(section)(), name)
    if not isinstance(values[name], dict):
        raise ConfigError(f"{section}.{name}: expected a mapping, got {_describe(values[name])}")
    return values[name]


def _read_layered_yaml(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config file {path} extends itself in a cycle")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    base: dict[str, Any] = {}
    parent = data.pop("extends", None)
    if parent:
        base = _read_layered_yaml(path.parent / str(parent), seen + (path,))
    for section, values in data.items():
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{path.name}: section {section!r} must be a mapping")
        base.setdefault(section, {})
        base[section] = {**base[section], **values} if isinstance(base[section], dict) else values
    return base


def from_dict(data: Mapping[str, Any]) -> Config:
    """Validate a nested mapping against :class:`Config` and build it."""
    kwargs: dict[str, Any] = {}
    for section, values in data.items():
        section_cls = _section_class(section)
        if not isinstance(values, Mapping):
            raise ConfigError(f"section {section!r} must be a mapping, got {type(values).__name__}")
        kwargs[section] = section_cls(
            **{key: _check(f"{section}.{key}", value, _field_type(section, key)) for key, value in values.items()}
        )
    return Config(**kwargs)


def _section_class(section: str) -> type:
    """The dataclass of a config section; ConfigError (with a did-you-mean) for an unknown one."""
    sections = {f.name: f for f in dataclasses.fields(Config)}
    if section not in sections:
        raise ConfigError(_unknown(section, sections))
    return _resolve(Config, sections[section])


def _field_type(section: str, key: str) -> Any:
    """The type hint of ``section.key``; ConfigError (with a did-you-mean) for an unknown key."""
    section_cls = _section_class(section)
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    if key not in fields:
        raise ConfigError(_unknown(f"{section}.{key}", {f"{section}.{k}" for k in fields}))
    return _resolve(section_cls, fields[key])


def _unknown(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown config key {key!r}{hint}"
