"""The machinery of the crash tests: prepare a store, kill a child before each step.

For an operation a child process (`storage_crash_child.py`) first runs it to the end to
count its durable steps (fsync, rename, unlink, chmod, mkdir, rmdir, link, COMMIT); then, on
a fresh store each time, a child is killed just before step 0, 1, 2, ... and a check
reopens the store as a restarted controller would.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("storage_crash_child.py")
PARALLEL = 4  # children at once: each mostly waits for fsync


@dataclass
class Case:
    """One prepared store and what the child should do to it."""

    root: Path
    data: Path
    spool: Path
    op: str
    now: datetime
    args: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


async def run_child(case: Case, kill_at: int) -> tuple[int, list[str]]:
    """(exit status, the steps taken when it ran to the end)."""
    spec = {
        "data_dir": str(case.data),
        "spool": str(case.spool),
        "op": case.op,
        "kill_at": kill_at,
        "now": case.now.isoformat(),
        "args": case.args,
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        json.dumps(spec),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    if proc.returncode == 0:
        return 0, json.loads(out)
    if proc.returncode != -signal.SIGKILL:
        raise AssertionError(f"child failed ({proc.returncode}): {err.decode()}")
    return proc.returncode, []


async def crash_everywhere(
    prepare: Callable[[Path], Awaitable[Case]],
    check: Callable[[Case], Awaitable[None]],
    base: Path,
) -> list[str]:
    """Run the operation to the end once, then kill it before each of its steps; `check`
    each outcome. Returns the steps of the complete run."""
    reference = await prepare(base / "reference")
    code, steps = await run_child(reference, -1)
    assert code == 0 and steps, "the operation took no durable step"
    await check(reference)
    limit = asyncio.Semaphore(PARALLEL)

    async def one(kill_at: int) -> None:
        async with limit:
            case = await prepare(base / f"kill-{kill_at}")
            code, _ = await run_child(case, kill_at)
            assert code == -signal.SIGKILL, f"step {kill_at} ({steps[kill_at]}) was not reached"
            try:
                await check(case)
            except AssertionError as error:
                raise AssertionError(
                    f"killed before step {kill_at} ({steps[kill_at]}): {error}"
                ) from error
            shutil.rmtree(case.root, ignore_errors=True)

    await asyncio.gather(*(one(k) for k in range(len(steps))))
    return steps


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []
