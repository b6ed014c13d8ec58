"""The one config mechanism: typed, frozen dataclasses read from mappings by their type hints.

Every config class of jaxmia (features, DRC, CDI, MIA, audit, model families, network configs) is
a dataclass parsed by :func:`from_mapping`, written by :func:`to_mapping` /
:func:`write_config_json` and overridden by :func:`parse_set` (CLI ``--set a.b=value``) plus
:func:`apply_overrides`. Design (docs/design.md, "locked configs"):

* the field's type hint is the only type rule: ``bool``, ``int``, ``float`` (an int is widened),
  ``str``, ``None``, ``Optional`` / unions (arms tried in order), ``Literal[...]``,
  ``tuple[X, ...]`` and fixed ``tuple[X, Y]`` (lists become tuples), ``Mapping[str, X]``, nested
  dataclasses (a section) and ``Any``;
* values from files and Python are checked strictly (``"5"`` is not an int, ``1`` is not a bool);
  values typed on a command line arrive as :class:`Text` and are parsed by the field's hint with
  one rule (:func:`parse_value`): JSON/TOML scalars (``200``, ``0.3``, ``true``, ``null``), and for
  a tuple field a comma list (``0,500``); a lone value is a one-entry tuple;
* an unknown key is an error naming it, the source and the close matches; a missing required key
  is an error naming it; semantic checks (ranges, cross-field rules) stay in each class's
  ``__post_init__`` / ``validate``;
* registered sections (:func:`sections_field`): a class whose section types are registered at run
  time (FeatureConfig's signal sections, ``features.drc.steps``) reads each as a top-level table
  ``name = {...}`` by that type's hints and writes each set one back there.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import inspect
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "Text", "apply_overrides", "check_keys", "coerce", "coerce_fields", "config_json", "from_class_config",
    "from_mapping", "merge", "parse_set", "parse_value", "sections_field", "to_class_config", "to_mapping",
    "write_config_json",
]


class Text(str):
    """A value typed on a command line: parsed by the hint of the field it lands in."""


# ---- values -----------------------------------------------------------------------------------------


def parse_value(text: str):
    """One CLI value as a JSON/TOML scalar: ``true``/``false``, ``null``/``none``, an int, a float, a
    JSON string, list or object; anything else is the text itself (stripped)."""
    s = str(text).strip()
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none"):
        return None
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    if s[:1] in ('"', "[", "{"):
        try:
            return json.loads(s)
        except json.JSONDecodeError:
            pass
    return s


def _describe(hint) -> str:
    """``hint`` in words, for error messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return "a bool (true or false)"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is tuple or hint is tuple:
        if not args:
            return "a list"
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list (each {_describe(args[0])})"
        return f"a list of {len(args)} ({'; '.join(_describe(a) for a in args)})"
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        return "a table (mapping)"
    if dataclasses.is_dataclass(hint):
        return f"a table ({hint.__name__})"
    return str(hint)


class _Mismatch(Exception):
    pass


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _coerce(value, hint, path: str, source: str):
    """``value`` as ``hint`` says; raises :class:`_Mismatch` when it does not fit."""
    if hint is Any or hint is object:
        return parse_value(value) if isinstance(value, Text) else value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if isinstance(value, Text) and type(None) in args and parse_value(value) is None:
            return None
        for arm in args:
            try:
                return _coerce(value, arm, path, source)
            except _Mismatch:
                continue
        raise _Mismatch
    if isinstance(value, Text) and not (hint is str or origin is tuple or hint is tuple):
        if dataclasses.is_dataclass(hint):
            raise _Mismatch
        value = parse_value(value)
    if hint is type(None):
        if value is None:
            return None
        raise _Mismatch
    if hint is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise _Mismatch
    if hint is int:
        if _is_int(value):
            return int(value)
        raise _Mismatch
    if hint is float:
        if _is_int(value) or isinstance(value, (float, np.floating)):
            return float(value)
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return str(value)
        raise _Mismatch
    if origin is typing.Literal:
        for allowed in args:
            if value == allowed and type(value) is type(allowed):
                return allowed
        raise _Mismatch
    if origin is tuple or hint is tuple:
        if isinstance(value, Text):
            value = [parse_value(v) for v in value.split(",") if v.strip()]
        elif not isinstance(value, (list, tuple, np.ndarray)):
            if not args or (len(args) == 2 and args[1] is Ellipsis):
                value = [value]  # a lone value is a one-entry tuple
            else:
                raise _Mismatch
        items = list(value)
        if not args:
            return tuple(items)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{path}[{i}]", source) for i, v in enumerate(items))
        if len(items) != len(args):
            raise _Mismatch
        return tuple(_coerce(v, a, f"{path}[{i}]", source) for i, (v, a) in enumerate(zip(items, args)))
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch
        key_hint, value_hint = args if args else (str, Any)
        return {_coerce(k, key_hint, path, source): _coerce(v, value_hint, f"{path}.{k}", source)
                for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise _Mismatch
        return from_mapping(hint, value, source=source, prefix=f"{path}.")
    raise AssertionError(f"jaxmia.config: no type rule for {path} ({hint})")


def coerce(value, hint, *, path: str, source: str):
    """``value`` converted to the type ``hint`` names (see the module docstring), or a
    ``ValueError`` ``"<source>: <path>=<value> must be <hint in words>"``."""
    try:
        return _coerce(value, hint, path, source)
    except _Mismatch:
        shown = str(value) if isinstance(value, Text) else value
        raise ValueError(f"{source}: {path}={shown!r} must be {_describe(hint)}") from None


# ---- keys -------------------------------------------------------------------------------------------


def check_keys(keys: Iterable, known: Sequence[str], *, source: str, what: str = "", prefix: str = "") -> None:
    """Refuses keys not in ``known``: ``ValueError`` naming them (with ``prefix``), ``source`` and the
    close matches (difflib)."""
    known = list(known)
    unknown = [k for k in keys if k not in known]
    if not unknown:
        return
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), known, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(repr(prefix + c) for c in close)}?)" if close else ""
        parts.append(f"{prefix + str(key)!r}{hint}")
    kind = f"{what} " if what else ""
    raise ValueError(f"{source}: unknown {kind}key(s) {', '.join(parts)}; known: {', '.join(sorted(known))}")


def _fields(cls) -> list:
    return [f for f in dataclasses.fields(cls) if f.init]


def _has_default(f) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


_SECTIONS = "jaxmia.config.sections"


def sections_field(types: Mapping[str, type]):
    """A dataclass field holding named config sections whose types are registered at run time.

    ``types`` (name -> dataclass) is read live, so registrations after the class is defined count (the
    signal registry's ``section=``). In a mapping each section is a top-level key ``name`` holding a
    table parsed by ``types[name]``'s hints (``features.drc.steps``); the field itself is not a key.
    It holds sorted ``(name, section)`` pairs (hashable); :func:`to_mapping` writes each back as ``name``.
    """
    return dataclasses.field(default=(), metadata={_SECTIONS: types})


def _sections_of(cls):
    """``cls``'s :func:`sections_field` and its types, or ``(None, {})``."""
    for f in _fields(cls):
        if _SECTIONS in f.metadata:
            return f, f.metadata[_SECTIONS]
    return None, {}


def _build_sections(types: Mapping[str, type], value, *, source: str, prefix: str = "") -> tuple:
    """Sections (a mapping or ``(name, section)`` pairs; each a section object or a table) → sorted pairs."""
    items = value.items() if isinstance(value, Mapping) else value
    out = {}
    for item in items:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ValueError(f"{source}: a config section must be a (name, section) pair, got {item!r}")
        name, section = item
        check_keys([name], list(types), source=source, what="config section", prefix=prefix)
        cls = types[name]
        if isinstance(section, Mapping):
            section = from_mapping(cls, section, source=source, what=f"{name} config", prefix=f"{prefix}{name}.")
        elif not isinstance(section, cls):
            raise ValueError(f"{source}: {prefix}{name} must be a table ({cls.__name__}), got {section!r}")
        out[name] = section
    return tuple(sorted(out.items()))


# ---- dataclasses ------------------------------------------------------------------------------------


def from_mapping(cls, mapping: Mapping[str, Any], *, source: str = "config", what: str = "", prefix: str = "",
                 ignore: Iterable[str] = (), skip_private: bool = False, exclude: Iterable[str] = ()):
    """``cls(**mapping)`` with every key checked against ``cls``'s fields and every value converted by
    the field's type hint (nested dataclasses from nested mappings).

    Args:
      source: where the mapping came from (a file, ``--set``, a class name), first in every message.
      what: the config kind in the unknown-key message (``"UViT config"``).
      prefix: the dotted path of this mapping inside its file (``"schedule."``).
      ignore: keys to skip (a file format's generic keys); ``skip_private`` skips keys starting
        with ``_`` (``_class_name``, ``_diffusers_version``); ``exclude``: fields a mapping may not
        set (they are filled by the caller).

    Raises:
      ValueError naming ``source`` and the key: not a mapping, an unknown key (with close
      matches), a missing required key, a value of the wrong type, or a ``__post_init__`` refusal.
    """
    if not isinstance(mapping, Mapping):
        where = f" {prefix[:-1]}" if prefix else ""
        raise ValueError(f"{source}:{where} must be a table (mapping), got {type(mapping).__name__}")
    ignore, exclude = set(ignore), set(exclude)
    section_field, section_types = _sections_of(cls)
    fields = [f for f in _fields(cls) if f.name not in exclude and f is not section_field]
    names = [f.name for f in fields]
    keys = [k for k in mapping if k not in ignore and not (skip_private and str(k).startswith("_"))]
    sections = [k for k in keys if k in section_types and k not in names]
    check_keys(keys, names + [k for k in section_types if k not in names], source=source, what=what, prefix=prefix)
    missing = [f.name for f in fields if not _has_default(f) and f.name not in mapping]
    if missing:
        raise ValueError(f"{source}: missing key(s) {', '.join(repr(prefix + m) for m in missing)}")
    hints = typing.get_type_hints(cls)
    values = {k: coerce(mapping[k], hints[k], path=prefix + k, source=source) for k in keys if k not in sections}
    if sections:
        values[section_field.name] = _build_sections(section_types, {k: mapping[k] for k in sections},
                                                     source=source, prefix=prefix)
    try:
        return cls(**values)
    except ValueError as err:
        if str(err).startswith(source):
            raise
        raise ValueError(f"{source}: {err}") from None


def from_class_config(cls, config: Mapping[str, Any], class_name: str | None, *, source: str = "config",
                      what: str | None = None, ignore: Iterable[str] = ()):
    """A network's ``config.json`` dict → its config dataclass (the folded ``models/typed_config``).

    ``_class_name`` (when ``class_name`` is given) must equal it; keys starting with ``_`` and those
    in ``ignore`` (a file format's generic keys) are skipped; then :func:`from_mapping` and the
    class's ``validate(source=...)`` when it has one.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"{source}: a model config must be a JSON object, got {type(config).__name__}")
    if class_name is not None and config.get("_class_name", class_name) != class_name:
        raise ValueError(f"{source}: _class_name is {config.get('_class_name')!r}, not {class_name!r}")
    out = from_mapping(cls, config, source=source, what=f"{what or class_name} config", ignore=ignore,
                       skip_private=True)
    validate = getattr(out, "validate", None)
    if validate is not None and "source" in inspect.signature(validate).parameters:
        validate(source=source)  # (a validate without it already ran in __post_init__)
    return out


def to_class_config(obj, class_name: str) -> dict:
    """The ``config.json`` dict of a network config dataclass: ``_class_name`` and every field."""
    return {"_class_name": class_name, **to_mapping(obj)}


def coerce_fields(obj, *, source: str | None = None) -> None:
    """Converts every field of the (frozen) dataclass ``obj`` in place by its type hint; for
    ``__post_init__``, so direct construction is checked like :func:`from_mapping`."""
    cls = type(obj)
    source = source or cls.__name__
    hints = typing.get_type_hints(cls)
    section_field, section_types = _sections_of(cls)
    for f in _fields(cls):
        value = getattr(obj, f.name)
        if f is section_field:
            value = _build_sections(section_types, value, source=source)
        else:
            value = coerce(value, hints[f.name], path=f.name, source=source)
        object.__setattr__(obj, f.name, value)


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_mapping(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def to_mapping(obj) -> dict:
    """The JSON-able mapping of a config dataclass (every init field, tuples as lists, sections as
    nested dicts, each set registered section as its own key); ``from_mapping(type(obj), to_mapping(obj)) == obj``."""
    section_field, _ = _sections_of(type(obj))
    out = {f.name: _plain(getattr(obj, f.name)) for f in _fields(type(obj)) if f is not section_field}
    if section_field is not None:
        out.update((name, to_mapping(section)) for name, section in getattr(obj, section_field.name))
    return out


def merge(base: Mapping, overrides: Mapping) -> dict:
    """``base`` updated by ``overrides`` recursively (a nested mapping updates, a value replaces)."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for k, v in overrides.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def apply_overrides(obj, nested: Mapping, *, source: str = "--set", what: str = "", prefix: str = ""):
    """A copy of the config ``obj`` with ``nested`` (e.g. from :func:`parse_set`) applied, parsed by
    :func:`from_mapping` (so unknown keys and wrong types are refused by name)."""
    return from_mapping(type(obj), merge(to_mapping(obj), nested), source=source, what=what, prefix=prefix)


# ---- command lines and files --------------------------------------------------------------------------


def parse_set(items: Sequence[str], *, sections: Sequence[str] | None = None) -> dict:
    """``["cdi.permutations=200", "drc.ratios=0.2,0.3"]`` → ``{"cdi": {"permutations": Text("200")},
    "drc": {"ratios": Text("0.2,0.3")}}``: the one ``--set a.b=value`` syntax.

    Each value stays :class:`Text` until it meets its field's hint (:func:`from_mapping`), so
    ``0,500`` is a list for a tuple field and ``loss,secmi`` a string for a string field. ``sections``
    (when given) are the first names a command accepts; another is refused naming the item.
    """
    out: dict = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        parts = [p.strip() for p in key.split(".")]
        if not sep or len(parts) < 2 or not all(parts):
            raise ValueError(f"--set {item!r}: expected SECTION.FIELD=VALUE, e.g. cdi.permutations=200")
        if sections is not None and parts[0] not in sections:
            check_keys([parts[0]], sections, source=f"--set {item!r}", what="section")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {part!r} is set both as a value and as a section")
        node[parts[-1]] = Text(value.strip())
    return out


def _json_ready(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def config_json(obj) -> str:
    """The one JSON form of a config: a dataclass (via :func:`to_mapping`) or a mapping of them,
    sorted keys, two-space indent, trailing newline."""
    data = to_mapping(obj) if dataclasses.is_dataclass(obj) else _plain(obj)
    return json.dumps(_json_ready(data), indent=2, sort_keys=True) + "\n"


def write_config_json(obj, path) -> Path:
    """Writes :func:`config_json` of ``obj`` to ``path`` atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # shards may write the same file
    tmp.write_text(config_json(obj))
    tmp.replace(path)
    return path
