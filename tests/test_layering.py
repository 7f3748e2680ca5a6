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
    backends = _storage_backends()
    for path in sorted((ROOT / "agi").glob("*.py")):
        imports = _imports(path)
        assert "callrec" not in imports, path.name
        assert not imports & DRIVERS, f"{path.name} imports a database driver"
        reached = _storage_modules(path) & (backends | {"storage.factory", "storage.store"})
        assert not reached, f"{path.name} imports a concrete store: {sorted(reached)}"


# Database drivers: a storage module that imports one is a ledger backend.
DRIVERS = {"aiosqlite", "sqlite3", "asyncpg", "psycopg", "psycopg_pool"}
# The use cases of the store, written once over the ports (storage/ports.py).
USE_CASES = (
    "rows",
    "calls",
    "deletion",
    "withdrawal",
    "ingest",
    "sweep",
    "access",
    "verify",
    "reconcile",
    "reports",
    "integrity",
    "store",
)
MAX_STORAGE_LINES = 500


def _storage_modules(path: Path) -> set[str]:
    """The storage modules `path` imports, by full name (`storage.x`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("storage."))
        elif isinstance(node, ast.ImportFrom) and node.module == "storage":
            found.update(f"storage.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("storage."):
            found.add(str(node.module))
    return found


def _storage_backends() -> set[str]:
    """Storage modules that talk to a database engine: they import a driver, or a module
    that does (the factory, which picks one, aside)."""
    graph = {
        f"storage.{p.stem}": (_imports(p), _storage_modules(p))
        for p in (ROOT / "storage").glob("*.py")
    }
    backends = {name for name, (imports, _) in graph.items() if imports & DRIVERS}
    while True:
        more = {
            name
            for name, (_, modules) in graph.items()
            if name not in backends and modules & backends and name != "storage.factory"
        }
        if not more:
            return backends
        backends |= more


def test_no_storage_module_is_a_god_object() -> None:
    """Every module of storage/ stays within ~500 lines: use cases are split by what they do."""
    for path in sorted((ROOT / "storage").glob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines <= MAX_STORAGE_LINES, f"{path.name} has {lines} lines"


def test_no_use_case_reaches_a_ledger_backend() -> None:
    """The use cases import no database driver and no backend module, not even through
    another module, so a second ledger (PostgreSQL) needs no change to them."""
    backends = _storage_backends()
    assert "storage.sqlite" in backends and "storage.db" in backends  # the test sees them
    for name in USE_CASES:
        path = ROOT / "storage" / f"{name}.py"
        assert path.exists(), name
        seen: set[str] = set()
        todo = [f"storage.{name}"]
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            source = ROOT / "storage" / f"{module.removeprefix('storage.')}.py"
            assert not _imports(source) & DRIVERS, f"{name} reaches a driver through {module}"
            todo += sorted(_storage_modules(source))
        reached = seen & (backends | {"storage.factory"})
        assert not reached, f"storage/{name}.py reaches the backend {sorted(reached)}"


def test_commands_are_typed_on_the_ports_not_on_sqlite() -> None:
    """callrec/ opens the store through the factory and types it on `storage.ports`."""
    backends = _storage_backends()
    for path in sorted((ROOT / "callrec").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "SqliteStore" not in text, path.name
        assert not _storage_modules(path) & backends, path.name


def _project_modules(path: Path) -> set[str]:
    """Every module of this project that `path` imports, by its full dotted name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] in PROJECT_PACKAGES}


PROJECT_PACKAGES = {"flows", "agi", "storage", "callrec", "prompts"}


def test_the_simulated_pbx_imports_nothing_of_the_project_but_itself() -> None:
    """agi/simpbx/ stands where Asterisk stands: it imports no flows/, storage/, callrec/,
    prompts/ or production agi/ module, so it cannot share the policy it is tested against."""
    files = sorted((ROOT / "agi" / "simpbx").glob("*.py"))
    assert len(files) >= 5, "agi/simpbx/ is a package of its own"
    for path in files:
        outside = {m for m in _project_modules(path) if not m.startswith("agi.simpbx")}
        assert not outside, f"agi/simpbx/{path.name} imports {sorted(outside)}"


def test_importing_the_simulated_pbx_loads_no_policy() -> None:
    """Importing agi.simpbx in a fresh interpreter loads no flows/ module, not even
    through a package's __init__."""
    import subprocess
    import sys

    probe = (
        "import sys, agi.simpbx\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{sorted(PROJECT_PACKAGES)!r} and not m.startswith('agi.simpbx') and m != 'agi')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == [], f"importing agi.simpbx loads {loaded}"


def test_production_code_never_imports_the_simulated_pbx() -> None:
    """The controller's own modules (agi/, storage/, flows/) never import the simulator;
    only the demo's wiring (callrec/harness.py) and tests do."""
    for package in ("agi", "storage", "flows"):
        for path in sorted((ROOT / package).glob("*.py")):
            reached = {m for m in _project_modules(path) if m.startswith("agi.simpbx")}
            assert not reached, f"{package}/{path.name} imports {sorted(reached)}"
