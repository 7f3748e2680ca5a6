"""The layering of DESIGN.md: flows/ is pure, adapters do not reach into each other."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_FLOWS = {
    "asyncio",
    "aiosqlite",
    "aiohttp",
    "aiomqtt",
    "agi",
    "storage",
    "callrec",
    "sqlite3",
    "socket",
    "subprocess",
    "os",
    "time",
}
CLOCK_READS = {"now", "utcnow", "today", "monotonic", "perf_counter", "time_ns"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_flows_import_no_io() -> None:
    """flows/ imports no asyncio, database, network, adapter or clock module."""
    for path in sorted((ROOT / "flows").glob("*.py")):
        bad = _imports(path) & FORBIDDEN_IN_FLOWS
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_flows_never_read_the_clock() -> None:
    """Time is always an argument in flows/: no datetime.now() or time.time() call."""
    for path in sorted((ROOT / "flows").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in CLOCK_READS, f"{path.name}:{node.lineno}"


def test_storage_and_agi_import_flows_only_from_the_project() -> None:
    """storage/ never imports agi/ or callrec/; agi/ never imports callrec/ or a concrete store."""
    for path in sorted((ROOT / "storage").glob("*.py")):
        assert not _imports(path) & {"agi", "callrec"}, path.name
    for path in sorted((ROOT / "agi").glob("*.py")):
        imports = _imports(path)
        assert "callrec" not in imports, path.name
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "storage.sqlite":
                raise AssertionError(f"{path.name} imports the concrete SQLite store")
