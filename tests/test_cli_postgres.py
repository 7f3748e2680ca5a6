"""The demo, the list and verify as an operator runs them with one variable set: the
ledger on PostgreSQL (CALLREC_LEDGER_URL), the files in the data directory."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pg_server
from cli_helpers import callrec

from storage.schema import MIGRATIONS


def _without_password(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc)), parts.password or ""


def test_demo_on_postgresql_passes_then_list_and_verify_read_that_ledger(
    tmp_path: Path, pg_database: str
) -> None:
    """`callrec demo` passes every scenario on a PostgreSQL ledger; `recordings list --json`
    and `recordings verify` then work on it, and `migrate` finds nothing to do."""
    with pg_server.schema(pg_database) as url:
        bare, password = _without_password(url)
        env = {"CALLREC_LEDGER_URL": bare, "CALLREC_LEDGER_PASSWORD": password}
        data = tmp_path / "demo"
        result = callrec("demo", "--json", "--scale", "0.02", data_dir=data, env=env, timeout=300)
        out = json.loads(result.stdout)
        assert out["scenarios"] and all(s.get("passed") for s in out["scenarios"])
        assert not (data / "ledger.sqlite3").exists()
        rows = json.loads(callrec("recordings", "list", "--json", data_dir=data, env=env).stdout)
        kept = [r["id"] for r in out["recordings"] if r["status"] != "deleted"]
        assert sorted(r["id"] for r in rows) == sorted(kept)
        verified = callrec("recordings", "verify", data_dir=data, env=env)
        assert "all match" in verified.stdout
        migrated = json.loads(callrec("migrate", "--json", data_dir=data, env=env).stdout)
        latest = len(MIGRATIONS)
        assert migrated == {"ledger": "postgresql", "from": latest, "to": latest}
