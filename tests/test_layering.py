"""Dependencies point one way: receiver -> archiver <- worker; the simulator stands alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "archiver": {"receiver", "worker"},
    "receiver": {"worker"},
    "worker": {"receiver", "starlette", "uvicorn"},
    "titan_simulator": {"archiver", "receiver", "worker"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_allows(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_init_files_are_empty() -> None:
    for package in FORBIDDEN:
        assert (ROOT / package / "__init__.py").read_text().strip() == ""
