"""The house rules of docs/architecture.md, checked on every module of offrl/: imports flow down the stages
(module-level and function-level imports alike), no import cycle, no private names imported across modules,
no optional-import guard around an offrl module, and no module over the size limit."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "offrl"

#: docs/architecture.md's table: stage -> rank (a module may import its own stage and lower ranks).
STAGES = {
    "offrl.errors": 0, "offrl.fsio": 0, "offrl.version": 0, "offrl.hardware": 0,
    "offrl.config": 1,
    "offrl.data": 2,
    "offrl.algos": 3,
    "offrl.evaluation": 4,
    "offrl.trainers": 5,
    "offrl.online": 6,
    "offrl.report": 7,
    "offrl.runs": 8,
    "offrl.datagen": 9,
    "offrl.bench": 10,
    "offrl.cli": 11, "offrl.__main__": 11,
    "offrl": 12,
}
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _stage(module: str) -> str:
    best = "offrl"
    for stage in STAGES:
        if (module == stage or module.startswith(stage + ".")) and len(stage) > len(best):
            best = stage
    return best


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def _resolve(node: ast.ImportFrom, module: str, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _target(name: str) -> str | None:
    while name and name not in MODULES:
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return name or None


def _imports() -> tuple[dict[str, set[str]], list[str], list[str]]:
    """(edges module -> offrl modules it imports, private-name imports, guarded offrl imports)."""
    edges: dict[str, set[str]] = defaultdict(set)
    private, guarded = [], []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_nodes(tree)
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Try) and any(
                ast.unparse(h.type or ast.Constant(None)).find("ImportError") >= 0 for h in node.handlers
            ):
                for child in node.body:
                    for sub in ast.walk(child):
                        if isinstance(sub, ast.ImportFrom) and _resolve(sub, module, is_pkg).startswith("offrl"):
                            guarded.append(f"{module}: {ast.unparse(sub)}")
                        if isinstance(sub, ast.Import) and any(a.name.startswith("offrl") for a in sub.names):
                            guarded.append(f"{module}: {ast.unparse(sub)}")
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, module, is_pkg)
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
                if base.startswith("offrl"):
                    for a in node.names:
                        if a.name.startswith("_") and not a.name.startswith("__"):
                            private.append(f"{module}: from {base} import {a.name}")
            else:
                continue
            for name in names:
                target = _target(name) if name.startswith("offrl") else None
                if target and target != module:
                    edges[module].add(target)
    return edges, private, guarded


EDGES, PRIVATE, GUARDED = _imports()


def test_imports_flow_down_the_stages():
    upward = []
    for module, targets in EDGES.items():
        own = STAGES[_stage(module)]
        for target in targets:
            if target == "offrl" and module != "offrl":
                upward.append(f"{module} -> offrl (the package root is the top: import the module that defines it)")
            elif STAGES[_stage(target)] > own:
                upward.append(f"{module} (stage {_stage(module)}) -> {target} (stage {_stage(target)})")
    assert not upward, "imports that go up the stages of docs/architecture.md:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in EDGES.get(v, ()):
            if w == "offrl" or w.startswith("offrl.") and v.startswith(w + ".") and MODULES[w].name == "__init__.py":
                continue  # a submodule reading its package's __init__ is not a cycle of jobs
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for module in MODULES:
        if module not in index:
            visit(module)
    assert not cycles, "import cycles (function-level imports counted): " + "; ".join(map(str, cycles))


def test_no_private_names_imported_across_modules():
    assert not PRIVATE, "private names imported from another module:\n" + "\n".join(PRIVATE)


def test_no_optional_import_guards_around_offrl_modules():
    assert not GUARDED, "offrl modules imported inside try/except ImportError:\n" + "\n".join(GUARDED)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]}: {lines} lines (at most {MAX_LINES}: split it by job)"


def test_every_module_belongs_to_a_stage():
    unknown = [m for m in MODULES if _stage(m) == "offrl" and m != "offrl"]
    assert not unknown, f"modules outside the stages of docs/architecture.md: {unknown}"
