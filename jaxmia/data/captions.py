"""Captions of images, one per image id: Hugging Face ``imagefolder`` metadata or a captions file.

Two sources, both keyed by the data set's ids (an image folder's ids are the paths relative to the
folder, ``sub/0001.png``; an ``.npz`` data set's ids are its ``ids`` array):

* **imagefolder metadata** (the Hugging Face ``datasets`` convention): a ``metadata.jsonl`` (one JSON
  object a line) or ``metadata.csv`` (a header row) in the image folder or any folder below it,
  with a ``file_name`` column (the image's path relative to the metadata file's folder) and a
  ``text`` column (its caption). Every ``file_name`` must name a file that exists.
* **a captions file** (``--captions FILE``): ``.jsonl`` rows or ``.csv`` columns with ``text`` and
  an ``id`` or ``file_name`` column; or ``.json``: an object ``{id: caption}`` or a list of such
  rows. Ids of other images are allowed (one file can caption several sets).

Every image of the data set needs exactly one caption. Refusals are one line naming the file and
the row (1-based; a CSV's header is row 1): a row that is not an object, lacks ``text`` or its key
column, has a caption that is not a string, names a missing file, or repeats an id; and, naming the
file, the images without a caption.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Mapping, Sequence

METADATA_NAMES = ("metadata.jsonl", "metadata.csv")
TEXT_COLUMN = "text"
KEY_COLUMNS = ("id", "file_name")
CAPTION_SUFFIXES = (".jsonl", ".csv", ".json")


def _rows_jsonl(path: Path):
    """(row number, object) of a JSON-lines file; blank lines are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} row {number}: not valid JSON ({err.msg})") from None
        yield number, row


def _rows_csv(path: Path):
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: empty CSV file (expected a header row)")
            header = [h.strip() for h in header]
            if len(set(header)) != len(header):
                raise ValueError(f"{path} row 1: repeated column name in header {header}")
            for number, values in enumerate(reader, start=2):
                if not values:
                    continue
                if len(values) != len(header):
                    raise ValueError(f"{path} row {number}: {len(values)} values for the {len(header)} columns "
                                     f"{', '.join(header)}")
                yield number, dict(zip(header, values))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None
    except csv.Error as err:
        raise ValueError(f"{path}: unreadable CSV ({err})") from None


def _rows(path: Path):
    if path.suffix == ".jsonl":
        return _rows_jsonl(path)
    if path.suffix == ".csv":
        return _rows_csv(path)
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if isinstance(data, dict):
            return ((n, {"id": k, TEXT_COLUMN: v}) for n, (k, v) in enumerate(data.items(), start=1))
        if isinstance(data, list):
            return enumerate(data, start=1)
        raise ValueError(f"{path}: expected an object {{id: caption}} or a list of rows, got {type(data).__name__}")
    raise ValueError(f"{path}: a captions file must be .jsonl, .csv or .json")


def _caption(path: Path, number: int, row, keys: Sequence[str]) -> tuple[str, str]:
    """(key, caption) of one row, or a one-line error naming the file and the row."""
    where = f"{path} row {number}"
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: expected an object with {' or '.join(map(repr, keys))} and {TEXT_COLUMN!r}, "
                         f"got {type(row).__name__}")
    present = [k for k in keys if k in row]
    if not present:
        raise ValueError(f"{where}: no {' or '.join(map(repr, keys))} column (has {', '.join(map(repr, row))})")
    if len(present) > 1:
        raise ValueError(f"{where}: give one of {', '.join(map(repr, present))}, not both")
    key = row[present[0]]
    if not isinstance(key, str) or not key:
        raise ValueError(f"{where}: {present[0]}={key!r} must be a non-empty string")
    if TEXT_COLUMN not in row:
        raise ValueError(f"{where}: no {TEXT_COLUMN!r} (the caption) for {key!r}")
    text = row[TEXT_COLUMN]
    if not isinstance(text, str):
        raise ValueError(f"{where}: the caption of {key!r} must be a string (one caption per image), got "
                         f"{type(text).__name__}")
    return key, text


def _add(out: dict, where: dict, key: str, text: str, path: Path, number: int) -> None:
    if key in out:
        raise ValueError(f"{path} row {number}: {key!r} has a caption already ({where[key]})")
    out[key] = text
    where[key] = f"{path} row {number}"


def metadata_files(folder) -> list[Path]:
    """The imagefolder metadata files in ``folder`` and below, sorted."""
    folder = Path(folder)
    return sorted(p for name in METADATA_NAMES for p in folder.rglob(name) if p.is_file())


def folder_captions(folder) -> dict[str, str]:
    """id (path relative to ``folder``) → caption, from every ``metadata.jsonl`` / ``metadata.csv``.

    Raises:
      ValueError naming the file and the row: see the module docstring; FileNotFoundError when the
      folder holds no metadata file.
    """
    folder = Path(folder)
    files = metadata_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no {' or '.join(METADATA_NAMES)} (the imagefolder captions: columns "
                                f"file_name and {TEXT_COLUMN}); or give a captions file")
    out: dict[str, str] = {}
    where: dict[str, str] = {}
    for path in files:
        base = path.parent
        for number, row in _rows(path):
            name, text = _caption(path, number, row, ("file_name",))
            target = base / name
            if Path(name).is_absolute() or ".." in Path(name).parts or not target.is_file():
                raise ValueError(f"{path} row {number}: file_name {name!r} is not a file in {base}")
            _add(out, where, target.relative_to(folder).as_posix(), text, path, number)
    return out


def file_captions(path) -> dict[str, str]:
    """id → caption from a captions file (``.jsonl``, ``.csv`` or ``.json``; module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: captions file not found")
    out: dict[str, str] = {}
    where: dict[str, str] = {}
    for number, row in _rows(path):
        key, text = _caption(path, number, row, KEY_COLUMNS)
        _add(out, where, key, text, path, number)
    if not out:
        raise ValueError(f"{path}: no captions")
    return out


def captions_for(ids: Sequence[str], *, captions=None, folder=None) -> tuple[list[str], str]:
    """One caption per id, in order, and where they came from.

    Args:
      ids: the data set's ids.
      captions: a captions file, or a mapping id → caption; None reads the imagefolder metadata
        of ``folder``.
      folder: the image folder the ids are relative to (for its metadata files).

    Raises:
      ValueError naming the source and the images that have no caption.
    """
    if captions is None:
        if folder is None or not Path(folder).is_dir():
            raise ValueError(f"{folder or 'the data set'}: captions come from an image folder's "
                             f"{' / '.join(METADATA_NAMES)} or from a captions file; give a captions file")
        table, source = folder_captions(folder), ", ".join(str(p) for p in metadata_files(folder))
    elif isinstance(captions, Mapping):
        table, source = dict(captions), "captions"
    else:
        table, source = file_captions(captions), str(captions)
    missing = [i for i in ids if i not in table]
    if missing:
        shown = ", ".join(map(repr, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{source}: no caption for {len(missing)} of {len(ids)} image(s): {shown}")
    return [table[i] for i in ids], source

