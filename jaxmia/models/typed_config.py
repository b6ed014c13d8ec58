"""``config.json`` ↔ a typed, frozen dataclass, for networks whose config has only scalar fields.

Used by the ports of the official DiT (:mod:`jaxmia.models.dit_official`) and U-ViT
(:mod:`jaxmia.models.uvit`): their config files are jaxmia's own (``_class_name`` ``DiT``, ``UViT``,
``UViTT2I``), holding the official constructor arguments. Unknown keys, wrong types and a wrong
``_class_name`` are refused by name; :func:`to_config` gives back what :func:`from_config` reads.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _coerce(key: str, value: Any, hint, source: str):
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    if optional:
        if value is None:
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{source}: {key}={value!r} must be true or false")
    if hint is int:
        if _is_int(value):
            return value
        raise ValueError(f"{source}: {key}={value!r} must be an integer")
    if hint is float:
        if _is_int(value) or isinstance(value, float):
            return float(value)
        raise ValueError(f"{source}: {key}={value!r} must be a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{source}: {key}={value!r} must be a string")
    raise AssertionError(f"no type rule for config key {key!r} ({hint})")


def from_mapping(cls, config: Mapping[str, Any], *, what: str, source: str = "config", ignore=()):
    """``cls(**config)`` with every key checked against ``cls``'s fields and type hints; then
    ``validate(source=...)`` when the class has one.

    Keys starting with ``_`` and those in ``ignore`` (a file format's generic keys) are skipped; an
    unknown key is refused by name (``what`` names the config kind in the message).
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"{source}: a model config must be a JSON object, got {type(config).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in config if k not in fields and k not in ignore and not str(k).startswith("_"))
    if unknown:
        raise ValueError(f"{source}: unknown {what} config key(s) {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(sorted(fields))})")
    out = cls(**{k: _coerce(k, config[k], hints[k], source) for k in fields if k in config})
    if hasattr(out, "validate"):
        out.validate(source=source)
    return out


def from_config(cls, config: Mapping[str, Any], class_name: str, *, source: str = "config"):
    """:func:`from_mapping` for a jaxmia ``config.json``, whose ``_class_name`` must be ``class_name``."""
    if isinstance(config, Mapping) and config.get("_class_name", class_name) != class_name:
        raise ValueError(f"{source}: _class_name is {config.get('_class_name')!r}, not {class_name!r}")
    return from_mapping(cls, config, what=class_name, source=source)


def to_config(obj, class_name: str) -> dict:
    """The ``config.json`` dict of a config dataclass (every field explicit)."""
    return {"_class_name": class_name, **dataclasses.asdict(obj)}
