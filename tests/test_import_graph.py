"""jaxmia's module graph (top-level imports, parsed with ast): no import circle, the model registry
imports no concrete model, library code never imports torch / diffusers / transformers, and nothing
in jaxmia imports the back-compat ``jaxmia.models.io`` (issue 17)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "jaxmia"
ORACLE_ONLY = ("torch", "diffusers", "transformers")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def top_level_imports(tree: ast.Module, name: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """(module, imported names) of the imports run when the module is imported: statements at module
    level, also inside top-level ``try``/``if`` blocks, but not under ``if TYPE_CHECKING``."""
    out = []

    def visit(body):
        for node in body:
            if isinstance(node, ast.Import):
                out.extend((alias.name, []) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                out.append((target, [alias.name for alias in node.names]))
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    return out


def all_imports(tree: ast.Module) -> list[str]:
    """Every module named by any import statement, at any depth (function-level imports included)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.append(node.module)
    return found


@pytest.fixture(scope="module")
def sources() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        out[module_name(path)] = (path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return out


@pytest.fixture(scope="module")
def graph(sources) -> dict[str, set[str]]:
    """jaxmia module -> the jaxmia modules its top-level imports load. ``from pkg import x`` is an edge
    to ``pkg.x`` when that is a module, else to ``pkg``; importing ``a.b`` is not counted as an edge
    to ``a`` (the parent package is initialised first, but it is not what the module depends on)."""
    out = {}
    for name, (path, tree) in sources.items():
        edges = set()
        for target, names in top_level_imports(tree, name, path.name == "__init__.py"):
            if not target.startswith("jaxmia"):
                continue
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in sources]
            edges.update(submodules)
            if len(submodules) < len(names) or not names:
                assert target in sources, f"{path}: imports {target}, which is not a module of jaxmia"
                edges.add(target)
        edges.discard(name)
        out[name] = edges
    return out


def find_cycle(graph: dict[str, set[str]]):
    """A list of modules forming a cycle, or None (iterative depth-first search)."""
    state = {}  # 1: on the stack, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = 1
                stack.append((child, iter(sorted(graph.get(child, ())))))
                path.append(child)
    return None


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_parser_resolves_relative_imports_and_skips_type_checking():
    tree = ast.parse("from typing import TYPE_CHECKING\nfrom . import sibling\nfrom .. import up\n"
                     "if TYPE_CHECKING:\n    import jaxmia.hidden\ndef f():\n    import jaxmia.lazy\n")
    found = top_level_imports(tree, "jaxmia.models.here", is_package=False)
    assert found == [("typing", ["TYPE_CHECKING"]), ("jaxmia.models", ["sibling"]), ("jaxmia", ["up"])]


def test_graph_covers_the_models_package(graph):
    assert {"jaxmia.models.registry", "jaxmia.models.loading", "jaxmia.models.formats", "jaxmia.models.blocks",
            "jaxmia.models.conversion", "jaxmia.models.builtin"} <= set(graph)
    assert "jaxmia.models.registry" in graph["jaxmia.models.unet2d"]
    assert "jaxmia.models.unet2d" in graph["jaxmia.models.builtin"]


def test_module_graph_is_acyclic(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_registry_imports_no_model(sources):
    _, tree = sources["jaxmia.models.registry"]
    jaxmia_imports = [m for m in all_imports(tree) if m.startswith("jaxmia")]
    assert jaxmia_imports == [], f"jaxmia/models/registry.py imports {jaxmia_imports}"


def test_formats_and_blocks_import_no_model(graph):
    models = {name for name in graph if name.startswith("jaxmia.models.")}
    for leaf in ("jaxmia.models.formats", "jaxmia.models.blocks", "jaxmia.models.registry"):
        assert not (graph[leaf] & models), f"{leaf} imports {sorted(graph[leaf] & models)}"


# Function-level imports of an oracle package that a user opts into, each refused with a one-line
# "pip install" message when the package is absent. Nothing else may import one.
OPT_IN_ORACLE_IMPORTS = {
    ("jaxmia/models/pytorch_ddpm.py", "torch"),  # reading a pytorch-ddpm .pt with torch.load(weights_only=True)
    ("jaxmia/models/torch_checkpoint.py", "torch"),  # --torch-legacy: pre-zip torch pickles
    ("jaxmia/models/clip_text.py", "transformers"),  # tokenize(): transformers' CLIPTokenizer
}


def test_library_never_imports_the_oracles(sources):
    at_import = [f"{path.relative_to(PACKAGE_DIR.parent)}: {module}" for name, (path, tree) in sources.items()
                 for module, _ in top_level_imports(tree, name, path.name == "__init__.py")
                 if module.split(".")[0] in ORACLE_ONLY]
    assert at_import == []
    anywhere = {(str(path.relative_to(PACKAGE_DIR.parent)), module.split(".")[0])
                for name, (path, tree) in sources.items() for module in all_imports(tree)
                if module.split(".")[0] in ORACLE_ONLY}
    assert anywhere == OPT_IN_ORACLE_IMPORTS


def test_importing_jaxmia_loads_no_oracle():
    code = ("import sys, jaxmia, jaxmia.models, jaxmia.cli, jaxmia.features; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers')))")
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_DIR.parent), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_nothing_in_jaxmia_imports_the_back_compat_io_module(sources):
    offenders = []
    for name, (path, tree) in sources.items():
        if name == "jaxmia.models.io":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "jaxmia.models" and any(
                    alias.name == "io" for alias in node.names):
                offenders.append(str(path))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                offenders += [str(path) for n in names if n == "jaxmia.models.io"]
    assert offenders == []
