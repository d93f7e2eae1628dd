"""The package's import structure: no circles, and the report readers (filter, audit) stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import rayood

PACKAGE = Path(rayood.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(tree: ast.AST, modules: set[str]) -> set[str]:
    """rayood modules a module imports anywhere: in functions (a lazy import is still a dependency) and under
    ``if TYPE_CHECKING`` (never run, but a type named from a module above is a circle all the same)."""
    found: set[str] = set()
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            candidates = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            found |= {name for name in candidates if name in modules}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        pending.extend(ast.iter_child_nodes(node))
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: _imported_modules(ast.parse(path.read_text()), modules) - {name} for name, path in paths.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_the_cycle_finder_finds_a_circle_through_a_lazy_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\ndef f():\n    import y\n")
    assert _imported_modules(tree, {"x", "y"}) == {"x", "y"}


def test_rayood_has_no_import_circles():
    assert import_cycles(import_graph()) == []


def test_filter_audit_and_the_job_entry_points_import_neither_torch_nor_ray():
    """Filtering and auditing read finished reports; they must start fast and run where torch is absent."""
    code = (
        "import sys; import rayood.cli, rayood.jobs, rayood.decide.filter, rayood.audit.job, rayood.bundle, "
        "rayood.pages.report_page; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'torchvision'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_what_screening_read_and_write_workers_unpickle_imports_no_torch():
    """Each Ray worker that reads, decodes or writes imports the module of every function and class it runs:
    one torch import there costs each such process hundreds of MiB (only the scoring actors need torch)."""
    code = (
        "import sys; import rayood.data.reader, rayood.report.row_files; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torchvision'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else module


# package -> packages it must never import: scoring sits below both fitting and screening; the models and the
# detectors below all three; the report artifact below every job that writes or reads it; its column names
# below everything; the pages below the jobs that write them.
FORBIDDEN = {
    "scoring": {"screen", "train", "jobs", "cli"},
    "train": {"screen", "jobs", "cli"},
    "detectors": {"scoring", "screen", "train", "jobs", "cli"},
    "models": {"detectors", "scoring", "screen", "train", "jobs", "cli"},
    "report": {"scoring", "screen", "train", "decide", "audit", "pages", "jobs", "cli"},
    "pages": {"scoring", "screen", "train", "decide", "audit", "jobs", "cli"},
    # the readers of finished reports: a screening they need (the audit's sides) is handed to them by the jobs
    "audit": {"scoring", "screen", "train", "jobs", "cli"},
    "decide": {"scoring", "screen", "train", "audit", "jobs", "cli"},
}


def test_no_package_imports_a_layer_above_it():
    graph = import_graph()
    upward = sorted(
        (module, imported)
        for module, imports in graph.items()
        for imported in imports
        if _package(imported) in FORBIDDEN.get(_package(module), set())
    )
    assert upward == []
    assert graph["rayood.report.columns"] == set()


def test_the_settings_import_nothing_of_rayood_but_themselves_and_the_report_column_names():
    graph = import_graph()
    outside = {
        (module, imported)
        for module, imports in graph.items()
        if _package(module) == "config"
        for imported in imports
        if _package(imported) != "config" and imported != "rayood.report.columns"
    }
    assert outside == set()
    assert {"rayood.config.model", "rayood.config.train", "rayood.config.screen", "rayood.config.loading"} <= set(graph)
