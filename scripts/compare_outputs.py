"""Are the outputs of two revisions the same? Runs the demo and the quick reproduction study in each
and compares what they write: feature tables bit for bit, JSON reports number for number.

    python scripts/compare_outputs.py --base 8844f11                 # base revision vs this checkout
    python scripts/compare_outputs.py --base 8844f11 --head s4-main  # two revisions
    python scripts/compare_outputs.py --base 8844f11 --parts demo    # only `jaxmia demo`

Each side is checked out with ``git worktree add --detach`` under ``--work`` (this checkout is used
as it is for ``--head .``) and run with its own code on ``PYTHONPATH``:

* ``demo``: ``jaxmia demo --out <side>/demo`` (the bundled target, guilty and innocent audits);
* ``reproduce``: ``python scripts/reproduce.py --quick --work <side>/reproduce`` (the study's
  stages at the tiny size: targets, features, DRC, statistics, document).

A side's outputs are kept, so the base runs once. Compared:

* every ``.npz`` (feature tables, DRC tables, splits): the same arrays, ``np.array_equal`` on the
  bytes' values (NaN equal to NaN), the same dtypes;
* every ``.safetensors`` / ``.msgpack`` (targets trained by the study): the same bytes;
* every ``.json``: the same keys and values, recursively; keys that hold wall times, dates, paths,
  versions or the commit are listed in :data:`VOLATILE_WORDS` and skipped (each skipped key is counted).

What head adds (a new key, a new table column, a new file) is listed as ``added``; what it changes
or drops is a difference. Paths are compared after replacing each side's output folder. Exit status
0 when nothing differs; otherwise every difference is printed, one line each.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

REPO = Path(__file__).resolve().parent.parent
PARTS = ("demo", "reproduce")
WEIGHTS = (".safetensors", ".msgpack")  # trained targets: compared byte for byte
COMPARED = (".npz", ".json") + WEIGHTS
# JSON keys whose values change from run to run (time, place, software) rather than with the maths:
# a key is volatile when one of its "_"-separated words is in this set (``dl_timestep`` is not).
VOLATILE_WORDS = frozenset(
    "wall seconds second s timing timings timestamp date elapsed created started finished duration "
    "throughput eta path paths dir folder files outputs html commit git version versions host machine "
    "platform python pid compile cache hits command cpu load".split())


def volatile(key) -> bool:
    return any(word in VOLATILE_WORDS for word in str(key).lower().split("_"))


def checkout(rev: str, work: Path) -> Path:
    """A detached worktree of ``rev`` (``.`` = this checkout as it is, uncommitted edits included)."""
    if rev == ".":
        return REPO
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                         capture_output=True, text=True)
    if sha.returncode:
        raise click.BadParameter(f"{rev!r} is not a revision of {REPO}", param_hint="--base/--head")
    sha = sha.stdout.strip()
    src = work / f"src-{sha[:12]}"
    if not src.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(src), sha], check=True,
                       capture_output=True)
    return src


def run_part(part: str, src: Path, out: Path, cache: Path) -> float:
    """Runs one part with ``src``'s code; skipped when ``out`` holds a finished run."""
    done = out / ".done"
    if done.exists():
        return float(done.read_text())
    env = dict(os.environ, PYTHONPATH=str(src), JAXMIA_COMPILE_CACHE=str(cache))
    if part == "demo":
        cmd = [sys.executable, "-c", "from jaxmia.cli import main; main()", "demo", "--out", str(out / "demo"), "--quiet"]
    else:
        cmd = [sys.executable, str(src / "scripts" / "reproduce.py"), "--quick", "--work", str(out / "reproduce"),
               "--no-progress"]
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        proc = subprocess.run(cmd, cwd=src, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise click.ClickException(f"{part} failed in {src} (exit {proc.returncode}); see {out / 'log.txt'}")
    wall = time.perf_counter() - start
    done.write_text(f"{wall:.1f}")
    return wall


def _same_number(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def compare_json(a, b, where: str, diffs: list, skipped: list, added: list, roots=("", "")) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if volatile(key):
                skipped.append(f"{where}.{key}")
                continue
            if key not in a:  # a new key: reported, not a change of what was there
                added.append(f"{where}.{key}")
                continue
            if key not in b:
                diffs.append(f"{where}.{key}: only in base")
                continue
            compare_json(a[key], b[key], f"{where}.{key}", diffs, skipped, added, roots)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) < len(b) and b[:len(a)] == a:  # items appended (e.g. a new column's name)
            added.append(f"{where}: {b[len(a):]}")
            return
        if len(a) != len(b):
            diffs.append(f"{where}: length {len(a)} vs {len(b)}")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            compare_json(x, y, f"{where}[{i}]", diffs, skipped, added, roots)
    elif isinstance(a, str) and isinstance(b, str) and roots[0] and a.replace(roots[0], "<out>") == b.replace(roots[1], "<out>"):
        return  # the same path under each side's own output folder
    elif not _same_number(a, b):
        diffs.append(f"{where}: {str(a)[:60]!r} vs {str(b)[:60]!r}")


def compare_npz(a: Path, b: Path, where: str, diffs: list, added: list) -> None:
    with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
        if {"ids", "names", "values"} <= set(za.files) and {"ids", "names", "values"} <= set(zb.files):
            # A feature table: the base's columns, by name, must be in head unchanged; new ones are added.
            na, nb = list(za["names"]), list(zb["names"])
            added += [f"{where}[{n}]" for n in nb if n not in na]
            missing = [n for n in na if n not in nb]
            if missing:
                diffs.append(f"{where}: column(s) {missing} only in base")
            if not np.array_equal(za["ids"], zb["ids"]):
                diffs.append(f"{where}[ids]: the rows differ")
                return
            keep = [n for n in na if n in nb]
            x = za["values"][:, [na.index(n) for n in keep]]
            y = zb["values"][:, [nb.index(n) for n in keep]]
            if x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=True):
                bad = sorted({keep[j] for j in np.argwhere(~((x == y) | (np.isnan(x) & np.isnan(y))))[:, 1]})
                diffs.append(f"{where}[values]: column(s) {bad} differ")
            skip = {"ids", "names", "values"}
        else:
            skip = set()
        missing = sorted(set(za.files) - set(zb.files))
        if missing:
            diffs.append(f"{where}: arrays {missing} only in base")
        added += [f"{where}[{n}]" for n in sorted(set(zb.files) - set(za.files))]
        for name in sorted((set(za.files) & set(zb.files)) - skip):
            x, y = za[name], zb[name]
            if x.dtype != y.dtype or x.shape != y.shape:
                diffs.append(f"{where}[{name}]: {x.dtype}{x.shape} vs {y.dtype}{y.shape}")
            elif not np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"):
                bad = np.argwhere(~((x == y) | (np.isnan(x) & np.isnan(y)) if x.dtype.kind in "fc" else x == y))
                diffs.append(f"{where}[{name}]: {len(bad)} of {x.size} values differ (first at {bad[0].tolist()})")


def compare_trees(base: Path, head: Path) -> tuple[list, list, list, int]:
    """Every compared file under ``base`` against its twin under ``head``: (changed, skipped, added, n)."""
    diffs, skipped, added, n = [], [], [], 0
    files = {p.relative_to(base) for p in base.rglob("*") if p.suffix in COMPARED}
    other = {p.relative_to(head) for p in head.rglob("*") if p.suffix in COMPARED}
    for rel in sorted(files - other):
        diffs.append(f"{rel}: only in base")
    added += [str(rel) for rel in sorted(other - files)]
    for rel in sorted(files & other):
        n += 1
        if rel.suffix == ".npz":
            compare_npz(base / rel, head / rel, str(rel), diffs, added)
        elif rel.suffix in WEIGHTS:
            if (base / rel).read_bytes() != (head / rel).read_bytes():
                diffs.append(f"{rel}: the weights' bytes differ")
        else:
            try:
                a, b = (json.loads((side / rel).read_text()) for side in (base, head))
            except json.JSONDecodeError as err:
                diffs.append(f"{rel}: not JSON ({err})")
                continue
            compare_json(a, b, str(rel), diffs, skipped, added, (str(base.parent), str(head.parent)))
    return diffs, skipped, added, n


@click.command()
@click.option("--base", required=True, help="Revision whose outputs are the reference.")
@click.option("--head", default=".", show_default=True, help="Revision to check ('.' = this checkout as it is).")
@click.option("--parts", default=",".join(PARTS), show_default=True, help="Comma list of parts to run and compare.")
@click.option("--work", default="runs/compare", show_default=True, type=click.Path(file_okay=False))
def main(base, head, parts, work):
    parts = [p for p in parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise click.BadParameter(f"unknown part(s) {unknown}; choose from {list(PARTS)}", param_hint="--parts")
    work = Path(work).resolve()
    cache = work / "compile-cache"
    sides = {}
    for label, rev in (("base", base), ("head", head)):
        src = checkout(rev, work)
        sha = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = rev == "." and subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                                              capture_output=True, text=True).stdout.strip()
        tag = sha[:12] + ("-dirty" if dirty else "")
        sides[label] = (src, work / "out" / tag, tag)
        click.echo(f"{label}: {rev} = {tag} ({src})")
    if sides["head"][2].endswith("-dirty"):
        # A dirty checkout's outputs are never reused: the edits may change between calls.
        import shutil
        shutil.rmtree(sides["head"][1], ignore_errors=True)
    failed = False
    for part in parts:
        for label, (src, out, _) in sides.items():
            wall = run_part(part, src, out / part, cache)
            click.echo(f"  {part} [{label}]: {wall:.0f} s")
        diffs, skipped, added, n = compare_trees(sides["base"][1] / part, sides["head"][1] / part)
        keys = sorted({re.sub(r"\[\d+\]", "[]", s.rsplit(".", 1)[-1]) for s in skipped})
        click.echo(f"{part}: {n} files compared, {len(skipped)} volatile values skipped ({', '.join(keys)})")
        for line in added:
            click.echo(f"  added   {line}")
        for line in diffs:
            click.echo(f"  DIFFERS {line}")
        click.echo(f"{part}: {'identical' if not diffs else f'{len(diffs)} differences'}"
                   + (f" ({len(added)} additions: new keys, columns or files)" if added else ""))
        failed |= bool(diffs)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
