"""The registry of official checkpoint formats: ``--format NAME`` -> its converter.

Each format module of :mod:`jaxmia.models.official` registers itself with :func:`register_format`;
this module imports none of them (the package's ``__init__`` does, once), so they can import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, NamedTuple


class OfficialFormat(NamedTuple):
    """One official checkpoint format.

    Attributes:
      name: what ``--format`` takes.
      summary: one line for ``jaxmia convert --help``.
      convert: ``convert(src: Path, dst: Path, **options) -> dict`` (a JSON-able report: the
        files read, the architecture found, parameter counts, digests).
      options: the options it accepts (``--option KEY=VALUE``), name -> help.
    """

    name: str
    summary: str
    convert: Callable[..., dict]
    options: Mapping[str, str]


FORMATS: dict[str, OfficialFormat] = {}


def register_format(name: str, summary: str, options: Mapping[str, str] | None = None):
    """Registers ``convert(src, dst, **options) -> dict`` under ``name``."""

    def decorate(convert):
        if name in FORMATS:
            raise ValueError(f"official format {name!r} registered twice")
        FORMATS[name] = OfficialFormat(name, summary, convert, dict(options or {}))
        return convert

    return decorate


def convert_official(name: str, src, dst, options: Mapping[str, str] | None = None) -> dict:
    """Runs the converter of format ``name``; an unknown format or option is refused by name."""
    if name not in FORMATS:
        raise ValueError(f"unknown official format {name!r} (known: {', '.join(sorted(FORMATS)) or 'none'})")
    fmt = FORMATS[name]
    options = dict(options or {})
    unknown = sorted(set(options) - set(fmt.options))
    if unknown:
        known = ", ".join(sorted(fmt.options)) or "none"
        raise ValueError(f"--format {name}: unknown option(s) {', '.join(map(repr, unknown))} (known: {known})")
    return {"format": name, **fmt.convert(Path(src), Path(dst), **options)}
