"""Field-level config machinery: the error that names a field, and values from JSON or the command line
turned into a section's declared types (``config.py`` holds the sections themselves)."""
from __future__ import annotations

import json
import math
from dataclasses import fields
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what to do."""


def _check(cond: bool, name: str, msg: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{name}: {msg} (got {value!r})")


def _coerce(ftype: Any, value: Any, name: str) -> Any:
    """Convert a JSON or command-line value to the field's declared type."""
    t = ftype if isinstance(ftype, str) else getattr(ftype, "__name__", str(ftype))
    try:
        if t == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
        if t == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if t == "float":
            v = float(value)
            if not math.isfinite(v):   # nan passes no comparison and inf every lower bound: refuse both here
                raise ConfigError(f"{name}: must be a finite number (got {value!r})")
            return v
        if t == "tuple[dict, ...]":
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, (list, tuple)):
                raise ValueError(value)
            return tuple(dict(v) if isinstance(v, dict) else v for v in value)
        if t == "tuple":
            if isinstance(value, str):
                value = json.loads(value)
            out = tuple(float(v) for v in value)
            if not all(math.isfinite(v) for v in out):
                raise ConfigError(f"{name}: must hold finite numbers (got {value!r})")
            return out
        return str(value)
    except (TypeError, ValueError, json.JSONDecodeError):
        raise ConfigError(f"{name}: expected {t} (got {value!r})") from None


def _from_dict(cls, d: dict, prefix: str):
    known = {f.name: f for f in fields(cls)}
    for k in d:
        if k not in known:
            raise ConfigError(f"{prefix}.{k}: unknown field; known fields: {', '.join(sorted(known))}")
    return cls(**{k: _coerce(known[k].type, v, f"{prefix}.{k}") for k, v in d.items()})
