"""Citations of the method pages resolve: every ``docs/methods/<page>.md §N`` names a heading of that
page, and so will every citation ``scripts/rewrite_doc_citations.py`` produces.

Old-style citations (the private notes' file names) are not failed here: they stay until the
rewrite is run once on the merged tree; ``python scripts/rewrite_doc_citations.py --check`` lists
them and exits 1 while any is left. No JAX import: the script and this file use the standard
library only.
"""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "rewrite_doc_citations.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("rewrite_doc_citations", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


rdc = _load_script()
# The notes' file names, taken from the script so that this file holds no old-style citation (the
# rewrite runs over tests/ too and must leave this file as it is).
_BY_PAGE = {}
for _old, _new in rdc.OLD_TO_NEW.items():
    _BY_PAGE.setdefault(_new, []).append(_old)
(CDI_OLD,), (MIA_OLD,), (MODELS_OLD,) = (_BY_PAGE[f"docs/methods/{p}.md"] for p in ("cdi", "mia", "models"))
DESIGN_OLD, STYLE_OLD = _BY_PAGE["docs/methods/design.md"]  # the design sketch, then the style lessons

# The section numbers the private notes use (and the code cites): each page must have all of them.
REQUIRED_SECTIONS = {
    "cdi": [str(i) for i in range(1, 12)] + [f"4.{i}" for i in range(1, 10)] + ["5.1", "5.2"]
    + [f"11.{i}" for i in range(1, 16)],
    "mia": [str(i) for i in range(1, 7)] + [f"2.{i}" for i in range(1, 8)] + [f"3.{i}" for i in range(1, 6)]
    + [f"4.{i}" for i in range(1, 4)],
    "models": [str(i) for i in range(1, 13)],
    "design": [str(i) for i in range(1, 15)],
}


def _repository_files():
    """Every text file that may cite a page: the scanned folders (docs/methods/ included) and README."""
    for top in [ROOT / d for d in rdc.SCAN_DIRS] + [ROOT / f for f in rdc.SCAN_FILES]:
        if top.exists():
            yield from rdc._text_files(top)


def _format(problems):
    return "\n".join(f"{c.path}:{c.line}: {', '.join(bad)} not in docs/methods/{c.page}.md  ({c.text})"
                     for c, bad in problems)


def test_pages_carry_the_notes_section_numbers_and_quirk_labels():
    anchors = rdc.load_anchors(ROOT)
    assert set(anchors) == set(rdc.PAGES)
    for page, numbers in REQUIRED_SECTIONS.items():
        missing = [n for n in numbers if n not in anchors[page][0]]
        assert not missing, f"docs/methods/{page}.md lacks headings for §{', §'.join(missing)}"
    assert anchors["cdi"][1] == {f"Q{i}" for i in range(1, 12)}
    text = (ROOT / "docs/methods/design.md").read_text(encoding="utf-8")
    assert "\n### Scale\n" in text  # cited by name: the design page's "Scale"


def test_every_method_page_citation_in_the_repository_resolves():
    anchors = rdc.load_anchors(ROOT)
    methods = (ROOT / rdc.METHODS_DIR).resolve()
    problems, seen = [], 0
    for path in _repository_files():
        text = rdc.read_text(path)
        if text is None:
            continue
        inside = methods in path.resolve().parents
        for citation in rdc.new_citations(text, str(path.relative_to(ROOT)), siblings=inside):
            seen += 1
            if bad := rdc.unresolved(citation, anchors):
                problems.append((citation, bad))
    assert not problems, "unresolved method-page citations:\n" + _format(problems)
    assert seen > 0


def test_the_rewrite_produces_only_resolvable_citations():
    """Applied in memory to the current tree, the rewrite leaves nothing old and nothing dangling."""
    anchors = rdc.load_anchors(ROOT)
    problems = []
    for path in rdc.target_files(ROOT):
        text = rdc.read_text(path)
        if text is None:
            continue
        new = rdc.rewrite_text(text)
        assert not rdc.old_citations(new), path
        assert rdc.rewrite_text(new) == new, f"{path}: the rewrite is not idempotent"
        for citation in rdc.new_citations(new, str(path.relative_to(ROOT))):
            if bad := rdc.unresolved(citation, anchors):
                problems.append((citation, bad))
    assert not problems, "citations that would dangle after the rewrite:\n" + _format(problems)


def test_rewrite_text_maps_each_note_and_nothing_else():
    text = (f"({CDI_OLD} §4.6; {MIA_OLD} §2.3–§2.4) {MODELS_OLD} §7, `{DESIGN_OLD}`, "
            f"{STYLE_OLD} §5 and {CDI_OLD} Q8\n")
    want = ("(docs/methods/cdi.md §4.6; docs/methods/mia.md §2.3–§2.4) docs/methods/models.md §7, "
            "`docs/methods/design.md`, docs/methods/design.md §5 and docs/methods/cdi.md Q8\n")
    assert rdc.rewrite_text(text) == want
    assert rdc.rewrite_text(want) == want
    untouched = (f"docs/{DESIGN_OLD} life{STYLE_OLD} my_{CDI_OLD} {CDI_OLD[:-3]}-v2.md x/{MIA_OLD} "
                 f"{MODELS_OLD[:-3]}.mdx docs/methods/design.md")
    assert rdc.rewrite_text(untouched) == untouched
    new, changes = rdc.rewrite_lines(f"a\n{CDI_OLD} §1\nb\n", "f.py")
    assert new == "a\ndocs/methods/cdi.md §1\nb\n"
    assert [(c.path, c.line, c.after) for c in changes] == [("f.py", 2, "docs/methods/cdi.md §1")]


def test_parser_reads_sections_ranges_quirks_and_links():
    p = "docs/" "methods/"  # split, so that these made-up citations are not the repository's own
    design = "des" "ign"  # and so that the rewrite does not take "{p}" + this name for a note
    text = (f"see {p}cdi.md §10, Q1–Q5, Q11 and {p}mia.md §2.3–§2.4, §5\n"
            f"[{p}models.md]({p}models.md) §6-§7; {p}{design}.md, \"Scale\"\n"
            f"{p}cdi.md §11.6: and {p}cdi.md §3.3–3.4 §99\n")
    got = [(c.line, c.page, c.sections, c.quirks) for c in rdc.new_citations(text)]
    assert got == [
        (1, "cdi", ("10",), ("Q1", "Q5", "Q11")),
        (1, "mia", ("2.3", "2.4", "5"), ()),
        (2, "models", ("6", "7"), ()),  # a markdown link counts once
        (2, "design", (), ()),
        (3, "cdi", ("11.6",), ()),
        (3, "cdi", ("3.3", "3.4", "99"), ()),
    ]
    siblings = rdc.new_citations("[mia.md](mia.md) §3.1 and [cdi.md](./cdi.md) Q2", siblings=True)
    assert [(c.page, c.sections, c.quirks) for c in siblings] == [("mia", ("3.1",), ()), ("cdi", (), ("Q2",))]
    anchors = {"cdi": ({"3.3", "3.4", "10", "11.6"}, {"Q1", "Q5", "Q11"})}
    last = rdc.new_citations(text)[-1]
    assert rdc.unresolved(last, anchors) == ["§99"]
    assert rdc.unresolved(rdc.new_citations(text)[1], anchors) == ["page docs/methods/mia.md does not exist"]
    sections, quirks = rdc.page_anchors("# Title\n## 1. One\n### 4.6 NO\n#### 11.15 Last\n| Q3 | x |\n## Contents\n")
    assert sections == {"1", "4.6", "11.15"} and quirks == {"Q3"}


def test_check_and_rewrite_on_a_copy(tmp_path, capsys):
    root = tmp_path / "repo"
    shutil.copytree(ROOT / rdc.METHODS_DIR, root / rdc.METHODS_DIR)
    (root / "jaxmia").mkdir()
    (root / "jaxmia" / "mod.py").write_text(f'"""Doc ({CDI_OLD} §4.6)."""\nx = 1  # {STYLE_OLD} §5\n')
    (root / "docs" / "page.md").write_text(f"Specs: {MIA_OLD} §2.3.\n")
    (root / "README.md").write_text("Nothing to rewrite.\n")
    (root / rdc.METHODS_DIR / "cdi.md").write_text(  # the target pages are never rewritten
        (ROOT / rdc.METHODS_DIR / "cdi.md").read_text(encoding="utf-8") + f"\n{CDI_OLD}\n")

    assert rdc.main(["--root", str(root), "--check"]) == 1
    out = capsys.readouterr().out
    assert "jaxmia/mod.py:1:" in out and "jaxmia/mod.py:2:" in out and "docs/page.md:1:" in out
    assert "3 old-style citation line(s)" in out and "docs/methods/cdi.md:" not in out

    assert rdc.main(["--root", str(root), "--dry-run"]) == 0
    assert "would change 3 line(s) in 2 file(s)" in capsys.readouterr().out
    assert CDI_OLD in (root / "jaxmia" / "mod.py").read_text()

    assert rdc.main(["--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "+ x = 1  # docs/methods/design.md §5" in out and "changed 3 line(s) in 2 file(s)" in out
    assert (root / "jaxmia" / "mod.py").read_text() == (
        '"""Doc (docs/methods/cdi.md §4.6)."""\nx = 1  # docs/methods/design.md §5\n')
    assert (root / "docs" / "page.md").read_text() == "Specs: docs/methods/mia.md §2.3.\n"
    assert (root / rdc.METHODS_DIR / "cdi.md").read_text(encoding="utf-8").endswith(f"\n{CDI_OLD}\n")

    assert rdc.main(["--root", str(root), "--check"]) == 0
    assert rdc.main(["--root", str(root)]) == 0
    assert "changed 0 line(s) in 0 file(s)" in capsys.readouterr().out
    assert rdc.main(["--root", str(tmp_path / "nowhere"), "--check"]) == 2


def test_this_file_survives_the_rewrite():
    text = Path(__file__).read_text(encoding="utf-8")
    assert not rdc.old_citations(text) and rdc.rewrite_text(text) == text


@pytest.mark.parametrize("args", [["--check"], ["--dry-run"]])
def test_command_line_runs_without_jax(args):
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{str(SCRIPT)!r}, *{args!r}]\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    print('exit', stop.code)\n"
        "print('jax imported' if 'jax' in sys.modules else 'no jax')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("no jax")
    assert "old-style citation line(s)" in result.stdout or "would change" in result.stdout


def test_no_citation_of_the_unshipped_notes_is_left():
    """Every citation points at a page that ships (docs/methods/); none at the team's private notes."""
    left = rdc.check_tree(ROOT)
    assert not left, "\n".join(f"{path}:{line}: {text}" for path, line, text in left[:10])
