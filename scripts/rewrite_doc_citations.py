"""Rewrite citations of the team's private notes into citations of the shipped method pages.

The code and docs cite five notes that never shipped with the repository. Each has a page under
``docs/methods/`` with the same section numbers, so a citation maps one to one:

    <note> §4.6            ->  docs/methods/cdi.md §4.6      (the CDI specification)
    <note> §2.3            ->  docs/methods/mia.md §2.3      (the per-image methods)
    <note> §7              ->  docs/methods/models.md §7     (models and weights)
    <note>, "Scale"        ->  docs/methods/design.md, "Scale"  (the design sketch)
    <note> §5              ->  docs/methods/design.md §5     (the style lessons)

(``OLD_TO_NEW`` below lists the note file names.) Only the file name changes; section numbers,
ranges and quirk labels (Q1..Q11) are kept as they are.

Usage (from the repository root)::

    python scripts/rewrite_doc_citations.py            # rewrite in place, print every change
    python scripts/rewrite_doc_citations.py --dry-run  # print what would change, write nothing
    python scripts/rewrite_doc_citations.py --check    # exit 1 listing every old-style citation

Scope: ``jaxmia/``, ``scripts/``, ``tests/``, ``docs/`` (not ``docs/methods/``, which is the target)
and ``README.md``; text files only (``TEXT_SUFFIXES``), this script itself excluded. The rewrite is
idempotent: a second run changes nothing. ``tests/test_doc_citations.py`` checks that every
``docs/methods/<page>.md §N`` citation in the repository names a heading of that page, using the
parser below.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

ROOT = Path(__file__).resolve().parents[1]
METHODS_DIR = "docs/methods"
PAGES = ("cdi", "mia", "models", "design")

# The private notes (file names as the code cites them) and the page each now lives in.
OLD_TO_NEW = {
    "cdi-spec.md": "docs/methods/cdi.md",
    "mia-methods.md": "docs/methods/mia.md",
    "models-and-weights.md": "docs/methods/models.md",
    "design.md": "docs/methods/design.md",
    "style.md": "docs/methods/design.md",
}

SCAN_DIRS = ("jaxmia", "scripts", "tests", "docs")
SCAN_FILES = ("README.md",)
EXCLUDED_DIRS = {"__pycache__", ".git", ".pytest_cache", "build", "dist"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".sh", ".cfg", ".ini", ".yaml", ".yml", ".json", ".html", ".rst"}

# An old-style citation: a bare note name, not part of a longer name or path ("docs/design.md",
# "lifestyle.md" and the new "docs/methods/design.md" do not match).
OLD_RE = re.compile(
    r"(?<![\w./\\-])(" + "|".join(re.escape(name) for name in OLD_TO_NEW) + r")(?![\w-])"
)

# A new-style citation: the page path, optionally written as a markdown link, then its references.
NEW_RE = re.compile(r"docs/methods/(" + "|".join(PAGES) + r")\.md(?:\]\([^)\s]*\))?")
# Inside docs/methods/ the pages link to each other by relative name: "[mia.md](mia.md) §3.1".
SIBLING_RE = re.compile(r"\[(" + "|".join(PAGES) + r")\.md\]\((?:\./)?(" + "|".join(PAGES) + r")\.md\)")
_NUM = r"\d+(?:\.\d+)*"
SECTION_RE = re.compile(r"§\s?(" + _NUM + r")(?:\s?[-–]\s?§?\s?(" + _NUM + r"))?")
QUIRK_RE = re.compile(r"Q(\d+)(?:\s?[-–]\s?Q(\d+))?")
SEPARATOR_RE = re.compile(r"(?:\s*,\s*|\s+and\s+|\s+)")
HEADING_RE = re.compile(r"^#{1,6}\s+(" + _NUM + r")\.?(?=\s)", re.MULTILINE)
QUIRK_LABEL_RE = re.compile(r"^\|\s*(Q\d+)\s*\|", re.MULTILINE)


@dataclass(frozen=True)
class Change:
    """One rewritten citation: where, and the line before and after."""

    path: str
    line: int
    before: str
    after: str


@dataclass(frozen=True)
class Citation:
    """A ``docs/methods/<page>.md`` citation and the references that follow it."""

    path: str
    line: int
    page: str
    sections: tuple  # section numbers as strings, both ends of every range
    quirks: tuple  # quirk labels, "Q1" ..., both ends of every range
    text: str


def rewrite_text(text: str) -> str:
    """``text`` with every old-style note name replaced by its page path (idempotent)."""
    return OLD_RE.sub(lambda m: OLD_TO_NEW[m.group(1)], text)


def rewrite_lines(text: str, path: str = "") -> tuple[str, list[Change]]:
    """The rewritten text and one :class:`Change` per line that changed."""
    out, changes = [], []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        new = rewrite_text(line)
        if new != line:
            changes.append(Change(path, number, line.rstrip("\n"), new.rstrip("\n")))
        out.append(new)
    return "".join(out), changes


def old_citations(text: str, path: str = "") -> list[tuple[str, int, str]]:
    """(path, line, line text) of every line holding an old-style citation."""
    return [(path, n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if OLD_RE.search(line)]


def _references(text: str, start: int) -> tuple[tuple, tuple]:
    """The section numbers and quirk labels that follow a page name at ``start``."""
    sections, quirks, pos = [], [], start
    while True:
        sep = SEPARATOR_RE.match(text, pos)
        at = sep.end() if sep else pos
        if (m := SECTION_RE.match(text, at)):
            sections += [g for g in m.groups() if g]
        elif (m := QUIRK_RE.match(text, at)):
            quirks += [f"Q{g}" for g in m.groups() if g]
        else:
            return tuple(sections), tuple(quirks)
        pos = m.end()


def new_citations(text: str, path: str = "", *, siblings: bool = False) -> list[Citation]:
    """Every ``docs/methods/<page>.md`` citation in ``text`` (and ``[page.md](page.md)`` links when
    ``siblings``, i.e. inside ``docs/methods/``), with the references that follow each."""
    found = []
    matches = [(m, m.group(1)) for m in NEW_RE.finditer(text)]
    if siblings:
        matches += [(m, m.group(2)) for m in SIBLING_RE.finditer(text)]
    for m, page in sorted(matches, key=lambda item: item[0].start()):
        sections, quirks = _references(text, m.end())
        line = text.count("\n", 0, m.start()) + 1
        end = text.find("\n", m.end())
        found.append(Citation(path, line, page, sections, quirks, text[m.start():end if end >= 0 else None].strip()))
    return found


def page_anchors(page_text: str) -> tuple[set, set]:
    """(section numbers of the page's numbered headings, quirk labels of its quirk table)."""
    return set(HEADING_RE.findall(page_text)), set(QUIRK_LABEL_RE.findall(page_text))


def unresolved(citation: Citation, anchors: dict) -> list[str]:
    """The references of ``citation`` that name no heading (or quirk) of its page."""
    if citation.page not in anchors:
        return [f"page docs/methods/{citation.page}.md does not exist"]
    sections, quirks = anchors[citation.page]
    bad = [f"§{s}" for s in citation.sections if s not in sections]
    bad += [q for q in citation.quirks if q not in quirks]
    return bad


def load_anchors(root: Path = ROOT) -> dict:
    """{page: (sections, quirks)} for every page in ``docs/methods/``."""
    out = {}
    for page in PAGES:
        path = root / METHODS_DIR / f"{page}.md"
        if path.is_file():
            out[page] = page_anchors(path.read_text(encoding="utf-8"))
    return out


def _text_files(top: Path) -> Iterator[Path]:
    if top.is_file():
        yield top
        return
    for path in sorted(top.rglob("*")):
        if any(part in EXCLUDED_DIRS for part in path.relative_to(top).parts):
            continue
        if path.is_file() and not path.is_symlink() and path.suffix in TEXT_SUFFIXES:
            yield path


def target_files(root: Path = ROOT) -> Iterator[Path]:
    """The files the rewrite touches: ``SCAN_DIRS`` and ``SCAN_FILES`` minus ``docs/methods/`` and
    this script."""
    me = Path(__file__).resolve()
    methods = (root / METHODS_DIR).resolve()
    tops = [root / d for d in SCAN_DIRS] + [root / f for f in SCAN_FILES]
    for top in tops:
        if not top.exists():
            continue
        for path in _text_files(top):
            resolved = path.resolve()
            if resolved == me or methods in resolved.parents:
                continue
            yield path


def read_text(path: Path) -> str | None:
    """The file's text, or None for a file that is not UTF-8 text."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def rewrite_tree(root: Path = ROOT, *, write: bool = True) -> list[Change]:
    """Rewrites every target file under ``root`` (or only reports, ``write=False``)."""
    changes = []
    for path in target_files(root):
        text = read_text(path)
        if text is None:
            continue
        new, file_changes = rewrite_lines(text, str(path.relative_to(root)))
        if file_changes and write:
            path.write_text(new, encoding="utf-8")
        changes += file_changes
    return changes


def check_tree(root: Path = ROOT) -> list[tuple[str, int, str]]:
    """Every old-style citation left in the target files under ``root``."""
    hits = []
    for path in target_files(root):
        text = read_text(path)
        if text is not None:
            hits += old_citations(text, str(path.relative_to(root)))
    return hits


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root [%(default)s]")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="list old-style citations; exit 1 if there are any")
    mode.add_argument("--dry-run", action="store_true", help="print the changes without writing them")
    args = parser.parse_args(list(argv) if argv is not None else None)
    root = args.root.resolve()
    if not (root / METHODS_DIR).is_dir():
        print(f"{root}: no {METHODS_DIR}/ folder; run from (or point --root at) the repository root", file=sys.stderr)
        return 2
    if args.check:
        hits = check_tree(root)
        for path, line, text in hits:
            print(f"{path}:{line}: {text}")
        print(f"{len(hits)} old-style citation line(s)" + (" (run scripts/rewrite_doc_citations.py)" if hits else ""))
        return 1 if hits else 0
    changes = rewrite_tree(root, write=not args.dry_run)
    for c in changes:
        print(f"{c.path}:{c.line}:\n  - {c.before.strip()}\n  + {c.after.strip()}")
    files = len({c.path for c in changes})
    verb = "would change" if args.dry_run else "changed"
    print(f"{verb} {len(changes)} line(s) in {files} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
