"""The demo, the list and verify as an operator runs them with one variable set: the
ledger on PostgreSQL (CALLREC_LEDGER_URL), the files in the data directory."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pg_server
from cli_helpers import callrec, fastagi_config, start_fastagi
from test_cli_input import one_line_error

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


def test_a_second_controller_with_the_same_id_on_one_postgresql_ledger_is_refused(
    tmp_path: Path, pg_database: str
) -> None:
    """While `callrec fastagi` serves a PostgreSQL ledger as controller `node-a`, a second
    `node-a` exits 2 with one line naming the id and the first's process; `node-b` runs beside
    it; once the first is killed (kill -9) `node-a` starts again."""
    with pg_server.schema(pg_database) as url:
        bare, password = _without_password(url)
        env = {"CALLREC_LEDGER_URL": bare, "CALLREC_LEDGER_PASSWORD": password}
        node_a = {**env, "CALLREC_CONTROLLER_ID": "node-a"}
        data = tmp_path / "data"
        config = fastagi_config(tmp_path / "etc")
        callrec("init", data_dir=data, env=env)
        first = start_fastagi(tmp_path, "first", data, config, node_a)
        running = [first]
        try:
            second = callrec(
                "fastagi", data_dir=data, config=config, env=node_a, check=False, timeout=60
            )
            line = one_line_error(second)
            assert "another controller with the id node-a" in line
            assert f"pid {first.pid}" in line
            running.append(
                start_fastagi(
                    tmp_path, "other", data, config, {**env, "CALLREC_CONTROLLER_ID": "node-b"}
                )
            )
            assert first.poll() is None
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
            running.append(start_fastagi(tmp_path, "again", data, config, node_a))
        finally:
            for proc in running:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=30)
