"""The layout is the architecture: receiver -> archiver <- worker; production code never
imports the dev side (devstack, the simulator) or the tests; benchmarks never import tests;
and no module imports itself back through others (no import cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("archiver", "receiver", "worker", "devstack", "titan_simulator", "bench", "tests")
DEV_SIDE = {"devstack", "titan_simulator", "tests", "bench"}

FORBIDDEN = {
    "archiver": {"receiver", "worker", "starlette", "uvicorn"} | DEV_SIDE,
    "receiver": {"worker"} | DEV_SIDE,
    "worker": {"receiver", "starlette", "uvicorn"} | DEV_SIDE,
    "titan_simulator": {"archiver", "receiver", "worker", "devstack", "tests", "bench"},
    "devstack": {"tests", "bench"},
    "bench": {"tests"},
}
# The one door from production code to the dev side: `titan-archiver dev` imports the dev
# stack inside the command's function, so nothing else ever loads it.
LAZY_ALLOWED = {("archiver/cli/dev.py", "devstack")}


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every absolute import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top))
            # "from archiver import lifecycle" imports the module archiver.media.lifecycle.
            found += [(f"{node.module}.{alias.name}", id(node) in top) for alias in node.names]
    return found


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_allows(package: str) -> None:
    offenders: dict[str, list[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        where = str(path.relative_to(ROOT))
        bad = {
            name.split(".")[0]
            for name, at_top in imports(path)
            if name.split(".")[0] in FORBIDDEN[package]
            and (at_top or (where, name.split(".")[0]) not in LAZY_ALLOWED)
        }
        if bad:
            offenders[where] = sorted(bad)
    assert offenders == {}


def test_the_dev_command_loads_the_dev_stack_only_when_run() -> None:
    path = ROOT / "archiver" / "cli" / "dev.py"
    assert ("devstack.dev", False) in imports(path)
    assert not any(name.startswith("devstack") and top for name, top in imports(path))


def test_no_import_cycles() -> None:
    known = modules()
    graph = {
        name: {m for m, _ in imports(path) if m in known and m != name}
        for name, path in known.items()
    }
    # Tarjan's strongly connected components: any with two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == []


# The shared package, grouped by concept, lowest first: a module imports only from its own
# group or the groups before it (the kernel at archiver/'s top level is the lowest: errors,
# settings, tables, the queue contract, object keys, the secret box, names). The CLI sits
# on top of all of them.
ARCHIVER_ORDER = (
    "",
    "infra",
    "media",
    "scheduling",
    "governance",
    "tenants",
    "reporting",
    "cli",
)


def group_of(module: str) -> str:
    """``archiver.media.query`` -> ``media``; a kernel module (``archiver.tables``) -> ``""``."""
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in ARCHIVER_ORDER:
        return parts[1]
    return "migrations" if parts[1:2] == ["migrations"] else ""


def test_archiver_groups_import_only_their_own_or_lower_groups() -> None:
    offenders: dict[str, list[str]] = {}
    rank = {name: i for i, name in enumerate(ARCHIVER_ORDER)}
    rank["migrations"] = 0
    known = modules()
    for name, path in known.items():
        if not name.startswith("archiver."):
            continue
        mine = rank[group_of(name)]
        upward = sorted(
            imported
            for imported, _ in imports(path)
            if imported in known
            and imported.startswith("archiver.")
            and rank[group_of(imported)] > mine
        )
        if upward:
            offenders[name] = upward
    assert offenders == {}


def test_every_archiver_module_sits_in_a_known_group() -> None:
    groups = {
        p.name for p in (ROOT / "archiver").iterdir() if p.is_dir() and p.name != "__pycache__"
    }
    assert groups == set(ARCHIVER_ORDER[1:]) | {"migrations"}


def test_init_files_are_empty() -> None:
    for package in PACKAGES:
        for init in (ROOT / package).rglob("__init__.py"):
            assert init.read_text().strip() == "", init
