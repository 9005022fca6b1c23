"""The import structure of docs/design.md holds in the code.

Every module under interbert/ is parsed with `ast` (nothing is imported) and every import counts,
at the top of a module or inside a function: the module graph has no cycle (imports under
`if TYPE_CHECKING:`, which only a type checker runs, are left out of that one), and every arrow
between two parts of the map is one that the import table of docs/design.md ("The parts and what
they may import") allows. The table is read from the document itself, so the document and the
code cannot drift apart; it must be layered (a part may import only parts listed above it), which
makes a back-arrow (a package importing an entry point, a lower package importing a higher one)
a failure here. Last, a fresh interpreter that imports the training path checks that no module
of `interbert.data.ingest` (the offline converters and the `interbert data` command) came along.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "interbert"
DESIGN = ROOT / "docs" / "design.md"
TABLE_HEADING = "## The parts and what they may import"
INGEST = "interbert.data.ingest"


def module_files() -> dict:
    """Module name -> (file, whether it is a package's __init__) for every .py file under interbert/."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


_MODULES = module_files()


def _owner(name: str, modules: dict) -> str | None:
    """The module that ``name`` (a module, or a name inside one) resolves to: its longest known prefix."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _type_checking_only(tree: ast.AST) -> set:
    """The import nodes under ``if TYPE_CHECKING:``: they run only under a type checker."""
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (getattr(node.test, "id", None) == "TYPE_CHECKING" or
                                         getattr(node.test, "attr", None) == "TYPE_CHECKING"):
            guarded.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    return guarded


def imported_modules(module: str, path: Path, is_package: bool, modules: dict, runtime_only: bool = False) -> set:
    """The project modules that ``module`` imports anywhere in its file (functions included);
    ``runtime_only`` leaves out the imports under ``if TYPE_CHECKING:``."""
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skipped = _type_checking_only(tree) if runtime_only else set()
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from a import b` imports module a.b when there is one, else a name of module a
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            owner = _owner(target, modules)
            if owner is not None and owner != module:
                found.add(owner)
    return found


def import_graph(runtime_only: bool = False) -> dict:
    """Module -> the project modules it imports (``runtime_only``: as Python runs it, without the
    imports only a type checker reads)."""
    modules = module_files()
    return {name: imported_modules(name, path, is_package, modules, runtime_only)
            for name, (path, is_package) in modules.items()}


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _cells(line: str) -> list:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _named(cell: str) -> list:
    """The parts a cell names: its backticked paths, relative to interbert/."""
    return [name.removeprefix("interbert/") for name in re.findall(r"`([^`]+)`", cell)]


def design_table(text: str) -> list:
    """``[(parts, allowed)]`` in the order of the rows of the import table: parts are paths relative
    to interbert/ (``errors.py``, ``data/store/``), allowed the set of parts the row may import.
    A row's third cell is ``nothing``, a list of parts, or ``all rows above but PARTS``; it may name
    only parts of the rows above it."""
    lines = text[text.index(TABLE_HEADING):].splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows, seen = [], []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        part_cell, _, import_cell = _cells(line)
        parts = _named(part_cell)
        if import_cell.lower().startswith("all rows above"):
            allowed = set(seen) - set(_named(import_cell))
        elif import_cell.lower() == "nothing":
            allowed = set()
        else:
            allowed = set(_named(import_cell))
        twice = sorted(set(parts) & set(seen))
        assert not twice, f"docs/design.md: {twice} named in two rows"
        unknown = sorted(allowed - set(seen))
        assert not unknown, f"docs/design.md: the row of {parts} may import {unknown}, which no row above names"
        rows.append((parts, allowed))
        seen.extend(parts)
    return rows


def part_of(module: str, parts: list) -> str | None:
    """The part of the table a module belongs to: its own file, else the deepest package listed."""
    relative = _MODULES[module][0].relative_to(PACKAGE).as_posix()
    best = None
    for part in parts:
        if (relative.startswith(part) if part.endswith("/") else relative == part) and \
                (best is None or len(part) > len(best)):
            best = part
    return best


def layering_violations(graph: dict, rows: list) -> list:
    allowed = {part: permitted for parts, permitted in rows for part in parts}
    parts = list(allowed)
    problems = []
    for module in sorted(graph):
        source = part_of(module, parts)
        if source is None:
            problems.append(f"{module}: in no row of the import table")
            continue
        for target in sorted(graph[module]):
            destination = part_of(target, parts)
            if destination is not None and destination != source and destination not in allowed[source]:
                problems.append(f"{module} imports {target}: {source} may not import {destination}")
    return problems


def test_the_module_graph_has_no_cycle():
    assert cycles(import_graph(runtime_only=True)) == []


def test_every_import_follows_the_table_of_docs_design():
    rows = design_table(DESIGN.read_text(encoding="utf-8"))
    assert len(rows) > 10
    assert layering_violations(import_graph(), rows) == []


def test_the_training_path_never_imports_ingest():
    code = ("import sys\n"
            "import interbert.pretrain, interbert.finetune, interbert.evaluate, interbert.training.loop\n"
            "print('\\n'.join(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.split()
    assert "interbert.training.loop" in loaded
    assert [name for name in loaded if name == INGEST or name.startswith(INGEST + ".")] == []


def test_nothing_on_the_training_path_reaches_ingest_through_any_import():
    """Function-level imports too: no module reachable from the entry points' training code
    (pretrain, finetune, evaluate) in the static graph is part of ingest."""
    graph = import_graph()
    reached, todo = set(), ["interbert.pretrain", "interbert.finetune", "interbert.evaluate"]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph[module])
    assert "interbert.training.loop" in reached
    assert sorted(name for name in reached if name == INGEST or name.startswith(INGEST + ".")) == []


@pytest.mark.parametrize("edit,expected", [
    # a package importing an entry point above it: a back-arrow (and here a cycle)
    ({"interbert.training.loop": {"interbert.pretrain"}}, "training/ may not import pretrain.py"),
    # the loop knowing a task
    ({"interbert.training.loop": {"interbert.pretraining.objective"}}, "training/ may not import pretraining/"),
    # the training path importing the offline converters
    ({"interbert.data.loading.loader": {"interbert.data.ingest.synth"}},
     "data/loading/ may not import data/ingest/"),
])
def test_the_checks_catch_a_back_arrow_and_an_ingest_import(edit, expected):
    graph = {module: set(targets) for module, targets in import_graph().items()}
    for module, targets in edit.items():
        graph[module] |= targets
    problems = layering_violations(graph, design_table(DESIGN.read_text(encoding="utf-8")))
    assert any(expected in problem for problem in problems), problems
