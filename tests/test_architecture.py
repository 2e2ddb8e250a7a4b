"""The package's shape: no import cycle between its modules (function-level imports included), the core
does not import a built-in dataset adapter, and ``lesionbench list`` starts without pandas."""

import ast
import importlib.util
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import lesionbench

SUBPACKAGES = ("lesionbench.methods", "lesionbench.datasets", "lesionbench.leaderboard")


def package_modules() -> dict[str, Path]:
    """Every module of the package -> its source file (the folders are mapped, so each subpackage is walked too)."""
    modules = {"lesionbench": Path(lesionbench.__file__)}
    for package in ("lesionbench", *SUBPACKAGES):
        path = importlib.import_module(package).__path__
        modules[package] = Path(importlib.util.find_spec(package).origin)
        for info in pkgutil.walk_packages(path, package + "."):
            modules.setdefault(info.name, Path(importlib.util.find_spec(info.name).origin))
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its source (top level, in functions, under
    TYPE_CHECKING). Edges to a module's own parent packages are left out: Python imports them first anyway."""

    def known(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {known(a.name) for a in node.names if a.name.split(".")[0] == "lesionbench"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package
                    package = name if is_package else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                if base.split(".")[0] != "lesionbench":
                    continue
                for alias in node.names:  # `from package import module` imports the module
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else known(base))
        ancestors = {name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)}
        graph[name] = targets - ancestors - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_reader_sees_imports_inside_functions():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    modules = package_modules()
    graph = import_graph(modules)
    assert {"lesionbench.methods", "lesionbench.datasets.layout", "lesionbench.leaderboard.tables"} <= set(modules)
    assert "lesionbench.methods" in graph["lesionbench.plugins"]  # imported inside load_plugins
    assert "lesionbench.leaderboard.report" in graph["lesionbench.leaderboard.formats"]


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph(package_modules()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_core_does_not_import_a_built_in_dataset_adapter():
    """Built-in adapters are plugins: the core reaches them through the registry (layout TOML files through a
    loader the datasets package registers)."""
    graph = import_graph(package_modules())
    core = [m for m in graph if not m.startswith(SUBPACKAGES)]
    offending = {m: sorted(t for t in graph[m] if t.startswith("lesionbench.datasets")) for m in core}
    assert not {m: t for m, t in offending.items() if t}


def test_list_starts_without_pandas():
    code = ("import runpy, sys\n"
            "sys.argv = ['lesionbench', 'list']\n"
            "try:\n    runpy.run_module('lesionbench', run_name='__main__')\n"
            "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('PANDAS', sorted(m for m in sys.modules if m.split('.')[0] == 'pandas'))\n")
    env = dict(os.environ, LESIONBENCH_DISABLE_PLUGIN_AUTOLOAD="1", COLUMNS="200")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "synth-tumor" in out.stdout  # it did list
    assert out.stdout.strip().splitlines()[-1] == "PANDAS []"
