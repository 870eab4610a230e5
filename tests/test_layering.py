"""The package's structure, read from the source with `ast` (nothing is imported):

- no import cycle among detkit modules (imports inside functions count too);
- lower layers (structures, config, errors, checkpoint, data, modeling, evaluation) never import a
  higher one (engine, benchmark, report, the scripts' helpers, tools, demo);
- tools/ and demo/ scripts reach detkit through the installed package, never by patching sys.path;
- no function in detkit/ longer than 80 lines without a `# long: <reason>` comment on its def line
  or just above it;
- no test module imports another test module (shared helpers and fixtures live in tests/conftest.py).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "detkit"
MAX_FUNCTION_LINES = 80

# The first component under detkit/ (a subpackage or a top-level module) -> lower or higher layer.
LOWER = {"structures", "config", "errors", "checkpoint", "data", "modeling", "evaluation", "atomic_write", "json_file"}
HIGHER = {"engine", "benchmark", "predictor", "cli", "report", "export"}
SCRIPTS = ("tools", "demo")  # folders of scripts: nothing in detkit may import them


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    return {module_name(p): p for p in sorted(root.rglob("*.py"))}


def imported_names(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    """The dotted names a module imports anywhere (top level, functions, TYPE_CHECKING blocks),
    `from a import b` giving both `a` and `a.b` (b may be a submodule); relative imports resolved."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the detkit modules it imports by name (a parent package is an edge only when
    the import names it itself, as `import detkit` or `from detkit import x` do)."""
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names = imported_names(tree, name, path.name == "__init__.py")
        graph[name] = {n for n in names if (n in modules or n.split(".")[0] in SCRIPTS) and n != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def layer(name: str) -> str | None:
    """'lower', 'higher' or None (the package root, other top-level modules) for a detkit module."""
    parts = name.split(".")
    if parts[0] in SCRIPTS:
        return "higher"
    if len(parts) < 2:
        return "higher"  # detkit/__init__ imports the Predictor
    if parts[1] in LOWER:
        return "lower"
    if parts[1] in HIGHER:
        return "higher"
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{name} imports {target}"
        for name, targets in graph.items()
        if layer(name) == "lower"
        for target in targets
        if layer(target) == "higher"
    )


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def long_functions(modules: dict[str, Path]) -> list[str]:
    """Functions over MAX_FUNCTION_LINES lines whose def line (or the line above it, or above its
    decorators) carries no `# long: <reason>`."""
    found = []
    for path in modules.values():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1
            if length <= MAX_FUNCTION_LINES:
                continue
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            nearby = [lines[node.lineno - 1], lines[first - 2] if first >= 2 else ""]
            if not any("# long:" in line and line.split("# long:", 1)[1].strip() for line in nearby):
                found.append(f"{shown(path)}:{node.lineno} {node.name} ({length} lines)")
    return found


def sys_path_patches(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                found.append(f"{shown(path)}:{node.lineno}")
    return found


# ---------------------------------------------------------------------------------------------
# The checks on the repository


def test_no_import_cycle():
    cycles = find_cycles(import_graph(package_modules()))
    assert cycles == [], f"import cycles among detkit modules: {cycles}"


def test_lower_layers_do_not_import_higher_ones():
    assert upward_imports(import_graph(package_modules())) == []


def test_scripts_do_not_patch_sys_path():
    scripts = sorted((ROOT / "tools").glob("*.py")) + sorted((ROOT / "demo").glob("*.py"))
    assert scripts
    assert sys_path_patches(scripts) == []


def cross_test_imports(paths: list[Path]) -> list[str]:
    """`path imports tests.test_x` for every test module that imports another one (shared helpers live in conftest)."""
    found = []
    for path in paths:
        names = imported_names(ast.parse(path.read_text()), f"tests.{path.stem}", is_package=False)
        found += [f"{shown(path)} imports {n}" for n in sorted(names) if n.startswith("tests.test_") and n.count(".") == 1]
    return found


def test_tests_share_helpers_through_conftest():
    assert cross_test_imports(sorted((ROOT / "tests").glob("test_*.py"))) == []


def test_no_long_function_without_a_reason():
    assert long_functions(package_modules()) == []


# ---------------------------------------------------------------------------------------------
# The checks themselves find what they look for (on small packages written here)


def write_package(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {module_name(p, root): p for p in sorted((root / "detkit").rglob("*.py"))}


def test_checks_find_a_cycle_an_upward_import_a_long_function_and_a_path_patch(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    modules = write_package(
        tmp_path,
        {
            "detkit/__init__.py": "",
            "detkit/data/__init__.py": "",
            "detkit/data/a.py": "def f():\n    from detkit.data import b\n",
            "detkit/data/b.py": "from .a import f\n",
            "detkit/evaluation/__init__.py": "",
            "detkit/evaluation/c.py": "from detkit.engine.d import g\nimport tools.x\n",
            "detkit/engine/__init__.py": "",
            "detkit/engine/d.py": f"def g():\n{body}\n\n# long: a reason\ndef h():\n{body}\n",
        },
    )
    graph = import_graph(modules)
    assert find_cycles(graph) == [["detkit.data.a", "detkit.data.b"]]
    assert upward_imports(graph) == ["detkit.evaluation.c imports detkit.engine.d", "detkit.evaluation.c imports tools.x"]
    found = long_functions(modules)
    assert len(found) == 1 and found[0].endswith(f"g ({MAX_FUNCTION_LINES + 1} lines)")
    script = tmp_path / "tool.py"
    script.write_text("import sys\nsys.path.insert(0, '.')\n")
    assert len(sys_path_patches([script])) == 1
    other_test = tmp_path / "test_y.py"
    other_test.write_text("from tests.test_x import helper\nfrom tests.conftest import TINY\n")
    assert cross_test_imports([other_test]) == [f"{other_test} imports tests.test_x"]
