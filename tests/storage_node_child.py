"""Child process of the many-controllers test: one controller's sweeps and withdrawals.

It opens the store named on the command line (a data directory and its PostgreSQL ledger),
waits for the shared start time so that every node begins at once, then runs its operations
in order and prints, as JSON, the recording ids each one reported deleted.

Usage: python storage_node_child.py '<json: data_dir, ledger_url, start_at, now, ops, caller>'
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from flows.policy import Policy
from storage.backends import PgStore
from storage.ledgers import LedgerConfig
from storage.ports import WithdrawalVia


async def run(spec: dict[str, Any]) -> dict[str, list[str]]:
    now = datetime.fromisoformat(spec["now"])
    ledger = LedgerConfig(url=spec["ledger_url"])
    deleted: dict[str, list[str]] = {}
    async with await PgStore.open(Path(spec["data_dir"]), Policy(), ledger) as store:
        await asyncio.sleep(max(0.0, spec["start_at"] - time.time()))
        for i, op in enumerate(spec["ops"]):
            if op == "sweep":
                report = await store.sweep(now)
                deleted[f"{i}:sweep"] = list(report.deleted)
            elif op == "withdraw":
                done = await store.withdraw(spec["caller"], WithdrawalVia.EMAIL, now, "dpo", now)
                deleted[f"{i}:withdraw"] = list(done.deleted)
            else:
                raise SystemExit(f"unknown operation {op!r}")
    return deleted


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(json.loads(sys.argv[1])))))
