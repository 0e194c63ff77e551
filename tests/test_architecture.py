"""docs/architecture.md's layer table holds for the code: every module of the package is in it once, each import
goes to the importer's own layer or one above it, and the imports at module level form no circle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "architecture.md"


def layers() -> dict[str, int]:
    """module (dotted, under trpo) -> its layer's number, from the page's table."""
    text = PAGE.read_text(encoding="utf-8")
    table = text[text.index("| layer | modules |"):]
    found: dict[str, int] = {}
    for row in table.splitlines()[2:]:
        if not row.startswith("|"):
            break
        cells = [c.strip() for c in row.strip("|").split("|")]
        number = int(re.match(r"(\d+)\.", cells[0]).group(1))
        for name in re.findall(r"`([\w.]+)`", cells[1]):
            assert name not in found, f"{name} is in two layers of {PAGE.name}"
            found[name] = number
    return found


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "trpo").rglob("*.py")):
        parts = path.relative_to(ROOT / "trpo").with_suffix("").parts
        if parts == ("__init__",):
            continue
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path) -> tuple[set[str], set[str]]:
    """The trpo modules a file imports at module level (outside `if TYPE_CHECKING:`), and those it imports inside
    functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top: set[str] = set()
    inner: set[str] = set()

    def targets(node: ast.AST) -> set[str]:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "trpo":
            return {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        if isinstance(node, ast.Import):
            return {a.name for a in node.names if a.name.split(".")[0] == "trpo"}
        return set()

    def walk(nodes: list[ast.stmt], at_top: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue  # for the type checker only: never run
            (top if at_top else inner).update(targets(node))
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    walk([child], at_top and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef))
    walk(tree.body, True)
    known = {f"trpo.{m}" for m in modules()}
    strip = lambda names: {n[5:] for n in names if n in known}  # noqa: E731
    return strip(top), strip(inner)


def test_every_module_is_in_one_layer_of_the_page() -> None:
    table, code = layers(), modules()
    assert sorted(set(code) - set(table)) == [], f"modules missing from {PAGE.name}'s layer table"
    assert sorted(set(table) - set(code)) == [], f"{PAGE.name} names modules that do not exist"


def test_imports_go_to_the_same_layer_or_above() -> None:
    table = layers()
    upward = []
    for name, path in modules().items():
        top, inner = imports(path)
        upward += [f"{name} (layer {table[name]}) imports {dep} (layer {table[dep]})"
                   for dep in sorted(top | inner) if dep != name and table[dep] > table[name]]
    assert upward == []


def test_module_level_imports_form_no_circle() -> None:
    graph = {name: imports(path)[0] - {name} for name, path in modules().items()}
    done: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        assert name not in stack, "import circle: " + " -> ".join((*stack[stack.index(name):], name))
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, (*stack, name))
        done.add(name)

    for name in graph:
        visit(name, ())


def test_the_checks_see_an_upward_import_and_a_circle(tmp_path: Path) -> None:
    """The walker finds imports inside functions and skips TYPE_CHECKING blocks (else the checks above pass on
    nothing)."""
    path = tmp_path / "m.py"
    path.write_text("from trpo import agent\nif TYPE_CHECKING:\n    from trpo.cli import main\n"
                    "def f():\n    from trpo.learner import Learner\n", encoding="utf-8")
    assert imports(path) == ({"agent"}, {"learner"})
    assert layers()["agent"] > layers()["learner"] > layers()["config"]
