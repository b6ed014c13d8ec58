"""Feature tables: the one file format between extraction and inference.

A table is a ``.npz`` written without pickles: ``ids`` (N,) unicode, ``names`` (F,) unicode,
``values`` (N, F) float64. A JSON sidecar ``<file>.json`` holds the resolved config, seed, model
digest and versions. Rows are joined by id, never by position (docs/methods/cdi.md §2, Q10).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class FeatureTable:
    ids: np.ndarray  # (N,) str
    names: tuple  # (F,) feature names
    values: np.ndarray  # (N, F) float64
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        ids = np.asarray(self.ids).astype(str)
        values = np.asarray(self.values, np.float64)
        if values.ndim != 2 or values.shape != (len(ids), len(self.names)):
            raise ValueError(
                f"feature table: values of shape {values.shape} do not match {len(ids)} ids x {len(self.names)} names"
            )
        if len(set(ids.tolist())) != len(ids):
            raise ValueError("feature table: duplicate ids")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "values", values)

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self._index(name)]

    def _index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"feature {name!r} not in table; it has {', '.join(self.names)}") from None

    def select(self, names: Sequence[str]) -> "FeatureTable":
        idx = [self._index(n) for n in names]
        return FeatureTable(self.ids, tuple(names), self.values[:, idx], dict(self.meta))

    def rows(self, ids: Sequence[str]) -> "FeatureTable":
        """Rows in the order of ``ids``; a missing id is an error naming it."""
        where = {i: k for k, i in enumerate(self.ids.tolist())}
        missing = [i for i in ids if i not in where]
        if missing:
            raise KeyError(f"id(s) not in feature table: {', '.join(map(repr, missing[:5]))}")
        order = np.array([where[i] for i in ids], dtype=np.int64)
        return FeatureTable(self.ids[order], self.names, self.values[order], dict(self.meta))


def join(tables: Sequence[FeatureTable]) -> FeatureTable:
    """Column-wise join by id (the ids of the first table define the order)."""
    first = tables[0]
    names, cols = [], []
    for t in tables:
        dup = set(names) & set(t.names)
        if dup:
            raise ValueError(f"feature tables share column(s) {sorted(dup)}")
        if set(t.ids.tolist()) != set(first.ids.tolist()):
            raise ValueError("feature tables hold different ids; cannot join")
        names += list(t.names)
        cols.append(t.rows(first.ids.tolist()).values)
    return FeatureTable(first.ids, tuple(names), np.concatenate(cols, axis=1), dict(first.meta))


def save_table(table: FeatureTable, path) -> Path:
    """Writes ``path`` (.npz) and ``path.json`` atomically (write to a temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, ids=table.ids.astype(str), names=np.asarray(table.names, dtype=str), values=table.values)
    os.replace(tmp, path)
    side = Path(str(path) + ".json")
    tmp_json = side.with_name(side.name + ".tmp")
    tmp_json.write_text(json.dumps(table.meta, indent=2, sort_keys=True, default=str))
    os.replace(tmp_json, side)
    return path


def load_table(path) -> FeatureTable:
    """Reads a table written by :func:`save_table`; never unpickles."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"feature table not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"ids", "names", "values"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: not a jaxmia feature table (missing {', '.join(sorted(missing))})")
            ids, names, values = z["ids"], z["names"], z["values"]
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise ValueError(f"{path}: holds pickled objects; jaxmia never unpickles") from None
        raise
    except Exception as err:  # zipfile.BadZipFile and friends
        raise ValueError(f"{path}: unreadable feature table ({type(err).__name__}: {err})") from None
    side = Path(str(path) + ".json")
    meta = json.loads(side.read_text()) if side.exists() else {}
    return FeatureTable(ids, tuple(names.tolist()), values, meta)
