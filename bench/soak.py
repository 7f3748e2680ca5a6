"""Soak: many simulated calls with random behaviour and random injected faults.

Not a speed benchmark: at the end it counts what must never exist, and prints the counts.
All of them must be zero:
- recordings stored for a call without a committed RECORD decision;
- files in the store or the spool that no stored recording owns (orphans);
- recording rows marked stored whose file is missing (rows without files);
- recordings still stored after a sweep past their delete-after;
- calls the ledger still holds open after every call has ended.

Faults, drawn at random while calls run: REST 500s on answer, play, variable and continue,
and the events WebSocket dropped (at a random event, or at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from agi.simpbx import CallerScript
from bench.figures import Result, Row
from bench.sizes import Sizes
from callrec.harness import Harness, harness
from flows.policy import Decision, Policy
from storage.ports import RecordingStatus

CALLS = {"tiny": 100, "default": 1_000, "full": 10_000}
CONCURRENCY = 40  # calls alive at once
TIME_SCALE = 0.005  # a 37 s question plays in 0.19 s
FAULT_RATE = 0.05  # share of calls that get a fault injected as they are placed
# A dropped WebSocket keeps the controller away for its reconnect backoff, seconds in which
# hundreds of sped-up calls would arrive. A PBX goes on taking calls meanwhile (they go on
# unrecorded), so this share of calls is placed at once; the rest wait for the controller,
# so that the soak is mostly about calls it serves.
OUTAGE_SHARE = 0.1
RECONNECT_WAIT = 30.0  # seconds a call waits for the controller before it is placed anyway
DROP_SHARE = 0.1  # of the faults, this share drops the WebSocket (each costs a reconnect)
SERVED_TARGET = 0.8  # share of calls that must reach the controller for the run to count
DIALED = ["040404045", "040404040", "040404030", "040404085"]
FAULTS = [
    ("POST", "/channels/*/answer"),
    ("POST", "/channels/*/play/*"),
    ("POST", "/channels/*/variable"),
    ("POST", "/channels/*/continue"),
]
DROP_AT = ["PlaybackStarted", "ChannelDtmfReceived", "StasisEnd", "ChannelVarset"]


def _script(rng: random.Random) -> CallerScript:
    kind = rng.random()
    keys: tuple[tuple[float, str], ...] = ()
    if kind < 0.45:
        keys = ((rng.uniform(0.5, 40.0), "1"),)
    elif kind < 0.65:
        keys = ((rng.uniform(0.5, 40.0), "2"),)
    elif kind < 0.75:
        keys = ((rng.uniform(0.5, 10.0), rng.choice("0345789*#")), (rng.uniform(10, 50), "1"))
    return CallerScript(
        keys=keys,
        hang_up_at=rng.uniform(1.0, 30.0) if rng.random() < 0.1 else None,
        agent_answers_after=None if rng.random() < 0.2 else rng.uniform(0.5, 5.0),
        give_up_after=rng.uniform(2.0, 8.0),
        talk_seconds=rng.uniform(1.0, 6.0),
    )


async def _one_call(h: Harness, rng: random.Random, number: int) -> str | None:
    assert h.sim is not None
    if not h.client.connected and rng.random() >= OUTAGE_SHARE:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(h.client.wait_connected(), RECONNECT_WAIT)
    if rng.random() < FAULT_RATE:
        if rng.random() < DROP_SHARE and h.client.connected:
            h.sim.drop_websockets_at(rng.choice(DROP_AT), deliver=rng.random() < 0.5)
        else:
            method, path = rng.choice(FAULTS)
            h.sim.fail_next(method, path, status=500)
    caller = f"0415{number % 100_000:05d}"
    placed = await h.sim.place_call(rng.choice(DIALED), caller, _script(rng))
    try:
        result = await asyncio.wait_for(placed.done, 120)
    except TimeoutError:
        return None
    return result.stasis_status or "never in Stasis"


async def _soak(h: Harness, calls: int, seed: int) -> tuple[int, int, int]:
    rng = random.Random(seed)
    gate = asyncio.Semaphore(CONCURRENCY)
    done = 0
    stuck = 0
    away = 0  # calls that found no controller connected (Stasis failed: unrecorded)

    async def guarded(number: int) -> None:
        nonlocal done, stuck, away
        async with gate:
            status = await _one_call(h, rng, number)
            if status is None:
                stuck += 1
            else:
                done += 1
                away += status == "FAILED"

    await asyncio.gather(*(guarded(n) for n in range(calls)))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while h.stasis.live_calls and loop.time() < deadline:
        await asyncio.sleep(0.05)
    return done, stuck, away


async def _counts(h: Harness, data_dir: Path) -> dict[str, int]:
    store = h.store
    rows = await store.recordings(include_deleted=True)
    stored = [r for r in rows if r.status is RecordingStatus.STORED]
    without_decision = 0
    for row in stored:
        call = await store.get_call(row.call_id)
        if call is None or call.decision is not Decision.RECORD:
            without_decision += 1
    owned = {Path(r.path).resolve() for r in stored if r.path}
    files = {p.resolve() for p in (data_dir / "recordings").rglob("*") if p.is_file()}
    spool = [p for p in (data_dir / "spool").iterdir() if p.is_file()]
    missing = sum(1 for r in stored if r.path is None or not Path(r.path).exists())
    open_calls = len(await store.open_calls())
    far = h.clock.now() + timedelta(days=400)
    await store.sweep(far)
    past = sum(
        1
        for r in await store.recordings()
        if r.status is RecordingStatus.STORED and r.delete_after <= far
    )
    verify = await store.verify()
    return {
        "recordings without a RECORD decision": without_decision,
        "orphan files in the store": len(files - owned),
        "files left in the spool": len(spool),
        "stored rows without a file": missing,
        "recordings past delete-after after a sweep": past,
        "calls still open": open_calls,
        "verify problems": len(verify.problems),
    }


async def run(sizes: Sizes, workdir: Path) -> Result:
    calls = CALLS.get(sizes.name, CALLS["default"])
    data_dir = workdir / "soak"
    policy = replace(Policy(), overload_window=timedelta(hours=3))
    started = time.perf_counter()
    async with harness(policy, data_dir, time_scale=TIME_SCALE) as h:
        done, stuck, away = await _soak(h, calls, seed=20261125)
        counts = await _counts(h, data_dir)
        stored = sum(1 for r in await h.store.recordings(include_deleted=True))
    wall = time.perf_counter() - started
    result = Result(
        name="soak",
        title=f"Soak: {calls:,} simulated calls, random behaviour, ~{FAULT_RATE:.0%} with faults",
        setup=[
            f"{CONCURRENCY} calls at a time on the simulated PBX, time scale {TIME_SCALE}",
            f"{done:,} calls finished, {stuck} did not finish in time; {away:,} found the "
            f"controller reconnecting (Stasis failed, unrecorded by design); {stored:,} "
            f"recordings made (incl. empty and deleted); wall time {wall:.1f} s",
        ],
    )
    for figure, count in counts.items():
        result.rows.append(Row(figure=figure, value=str(count), target="0", met=count == 0))
    result.rows.append(
        Row(figure="calls that did not finish", value=str(stuck), target="0", met=stuck == 0)
    )
    served = done - away
    result.rows.append(
        Row(
            figure="calls the controller served",
            value=f"{served:,} of {calls:,}",
            target=f">= {SERVED_TARGET:.0%}",
            met=served >= SERVED_TARGET * calls,
        )
    )
    return result
