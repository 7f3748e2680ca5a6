"""Child process of the crash tests: one store operation, killed at a chosen step.

It wraps, in this process only, every durable step the store can take (`os.fsync`,
`os.replace`, `os.rename`, `os.unlink`, `os.link`, `os.chmod`, `os.mkdir`, `os.rmdir` and
the ledger's COMMIT, on SQLite or PostgreSQL) and sends itself SIGKILL just before step
number `kill_at` (0-based),
as a power cut or `kill -9` would. With `kill_at` -1 it runs to the end and prints the
steps it took as JSON. The product code has no fault hooks; only this wrapper knows.

Usage: python storage_crash_child.py '<json: data_dir, spool, op, kill_at, now, args>'
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from storage_helpers import open_store

from flows.policy import Policy, Purpose
from storage.ports import WithdrawalVia

WATCHED = ("fsync", "replace", "rename", "unlink", "link", "chmod", "mkdir", "rmdir")


def arm(kill_at: int) -> list[str]:
    steps: list[str] = []
    lock = threading.Lock()

    def step(name: str) -> None:
        with lock:
            steps.append(name)
            if len(steps) - 1 == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    def wrap(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def watched(*args: Any, **kwargs: Any) -> Any:
            step(name)
            return real(*args, **kwargs)

        return watched

    for name in WATCHED:
        setattr(os, name, wrap(name, getattr(os, name)))

    # The ledger commits on aiosqlite's thread through the sqlite3 connection itself, whose
    # methods cannot be replaced: every connection is made of a subclass that counts them.
    class Watched(sqlite3.Connection):
        def commit(self) -> None:
            step("commit")
            super().commit()

    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real_connect(*args, **kwargs, factory=Watched)

    sqlite3.connect = connect

    # On PostgreSQL the ledger's transactions end in an explicit COMMIT statement.
    real_execute = psycopg.Connection.execute

    def execute(self: psycopg.Connection[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        if query == "COMMIT":
            step("commit")
        return real_execute(self, query, *args, **kwargs)

    psycopg.Connection.execute = execute  # type: ignore[method-assign]
    return steps


async def run(spec: dict[str, Any], steps: list[str]) -> None:
    now = datetime.fromisoformat(spec["now"])
    args = spec["args"]
    store = await open_store(Path(spec["data_dir"]), Policy(), create=True)
    try:
        match spec["op"]:
            case "ingest":
                await store.ingest(args["call_id"], Path(args["source"]), now)
            case "sweep":
                await store.sweep(now)
            case "withdraw":
                await store.withdraw(args["caller"], WithdrawalVia.EMAIL, now, "dpo", now)
            case "export":
                await store.export(args["ids"], Path(args["dest"]), Purpose.EVIDENCE, "dpo", now)
            case other:
                raise SystemExit(f"unknown operation {other!r}")
    finally:
        await store.close()


def main() -> None:
    spec = json.loads(sys.argv[1])
    steps = arm(int(spec["kill_at"]))
    asyncio.run(run(spec, steps))
    print(json.dumps(steps))


if __name__ == "__main__":
    main()
