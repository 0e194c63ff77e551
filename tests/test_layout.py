"""The package's shape, held by tests: no library file over MAX_LINES lines, every module opening with a docstring
(what it owns and what it must not touch), no import circle between trpo's modules (read from the source), and every
module importable first, alone, in a fresh interpreter."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "trpo"
MAX_LINES = 450  # the limit: a module a reader takes in at one sitting


def _modules() -> dict[str, Path]:
    """Every module of trpo/ by dotted name (a package by its __init__.py)."""
    found = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = file.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return found


def test_no_library_file_is_over_the_line_limit() -> None:
    long = {str(f.relative_to(ROOT)): n for f in _modules().values()
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines (split them by what they own): {long}"


def test_every_module_opens_with_a_docstring() -> None:
    missing = [name for name, f in _modules().items()
               if not (ast.get_docstring(ast.parse(f.read_text(encoding="utf-8"))) or "").strip()]
    assert not missing, f"modules without a docstring saying what they own: {missing}"


def _imports_at_load(name: str, file: Path, known: set[str]) -> set[str]:
    """The trpo modules that loading `file` imports: its module-level imports (inside if/try blocks too), not
    those under `if TYPE_CHECKING:` nor those inside functions (imported on use)."""
    out: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                out.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out.add(node.module)
                out.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                visit(node.orelse)
                visit(node.finalbody)
                for handler in node.handlers:
                    visit(handler.body)

    visit(ast.parse(file.read_text(encoding="utf-8")).body)
    return {m for m in out if m in known and m != name}


def test_no_import_circle_between_modules() -> None:
    # Parts depend downward only. A package's __init__ importing its own modules is no circle (its modules' edges
    # to the package are not counted: Python loads the package first either way).
    modules = _modules()
    graph = {name: _imports_at_load(name, f, set(modules)) for name, f in modules.items()}
    circles, done = [], set[str]()

    def walk(name: str, path: list[str]) -> None:
        if name in path:
            circles.append(" -> ".join([*path[path.index(name):], name]))
            return
        if name in done:
            return
        for dep in sorted(graph[name]):
            walk(dep, [*path, name])
        done.add(name)

    for name in sorted(graph):
        walk(name, [])
    assert not circles, f"import circles: {circles}"


# Each module imported first, with every trpo module forgotten before it (third-party ones stay loaded: torch once,
# not once per module), so that a circle that breaks only in some import order shows. A module whose optional
# third-party package is not installed is reported as such, not as a failure.
_FRESH_IMPORTS = """
import importlib, json, sys, traceback, warnings
warnings.simplefilter("ignore")
results = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "trpo" or m.startswith("trpo.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
        results[name] = "ok"
    except ModuleNotFoundError as exc:
        ours = (exc.name or "").split(".")[0] == "trpo"
        results[name] = traceback.format_exc() if ours else "optional:" + str(exc.name)
    except Exception:
        results[name] = traceback.format_exc()
print(json.dumps(results))
"""


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    names = sorted(_modules())
    res = subprocess.run([sys.executable, "-c", _FRESH_IMPORTS, json.dumps(names)], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    results = json.loads(res.stdout.strip().splitlines()[-1])
    assert sorted(results) == names
    failed = {name: outcome for name, outcome in results.items() if outcome != "ok" and
              not outcome.startswith("optional:")}
    assert not failed, "\n\n".join(f"{name}:\n{outcome}" for name, outcome in failed.items())


def test_config_sits_below_resolution_coercion_and_presets() -> None:
    # config imports coerce, errors and validation (which imports config only for the type checker); resolve
    # imports config and presets; presets and coerce import no config.
    modules = _modules()
    graph = {name: _imports_at_load(name, f, set(modules)) for name, f in modules.items()}
    assert graph["trpo.config"] <= {"trpo.coerce", "trpo.errors", "trpo.validation"}
    assert graph["trpo.validation"] <= {"trpo.coerce", "trpo.errors"}
    assert {"trpo.config", "trpo.presets"} <= graph["trpo.resolve"]
    assert "trpo.config" not in graph["trpo.presets"] | graph["trpo.coerce"]
