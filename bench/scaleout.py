"""Scale-out: four controllers, each with its own simulated PBX, on one PostgreSQL ledger,
beside four controllers each on its own SQLite ledger, in the same run.

Each controller is `callrec serve` in a child process (its spool its own, configured as in
production); the four simulated PBXs run in this process and place their calls at the same
moment, so that all calls of all nodes are alive at once. While the calls run, two more
nodes sweep and withdraw on the ledger at the same time (on SQLite: on node 0's ledger):
before the run the ledger is seeded with recordings, half of them due, and the other half
made for customers who withdraw during the run. Afterwards every seeded recording due or
withdrawn must be deleted with exactly one audit entry, every call's recording stored, and
`verify` clean. Then callback look-ups are timed on the ledger.

The machine's two cores carry four controllers, four simulators and the database server
together: the figures compare the two ledgers under the same load; they are not the
capacity of one node (`bench.callflows` is).
"""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import shutil
import subprocess
import sys
import time
import wave
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench import callflows
from bench.figures import Result, Row, count, ms, percentile
from bench.ledger_fill import customer_number
from bench.pg_driver import database, reachable, server_url
from bench.processes import child_env
from bench.progress import say
from bench.sizes import Sizes
from flows.errors import CallrecError
from flows.outcome import Outcome
from flows.policy import Decision, Direction, LegalBasis, Policy
from prompts.catalog import load_catalog
from storage.factory import open_ledger
from storage.ledgers import LedgerConfig, redact
from storage.ports import CallStart, DecisionRecord, WithdrawalVia
from storage.store import Store

NODES = 4
POLICY = Policy()
LOOKUPS = 500
SEEDED = 40  # recordings made before the run: half due, half withdrawn during it


def _wav() -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(8000)
        writer.writeframes(os.urandom(3200))
    return out.getvalue()


@dataclass(slots=True)
class Ledgers:
    name: str
    setups_per_second: float = 0.0
    digit: list[float] = field(default_factory=list)
    lookups: list[float] = field(default_factory=list)
    recorded: int = 0
    stored: int = 0
    deletions_once: bool = False
    seeded_gone: int = 0
    verify_ok: bool = False
    problems: list[str] = field(default_factory=list)


async def _seed(store: Store, spool: Path, now: datetime) -> tuple[set[str], list[str]]:
    """Recordings: half made seven months ago (due), half yesterday for customers who will
    withdraw. Their ids, and the withdrawing customers' numbers."""
    ids: set[str] = set()
    withdrawing: list[str] = []
    for i in range(SEEDED):
        due = i % 2 == 0
        at = now - (timedelta(days=214) if due else timedelta(days=1))
        customer = customer_number(900_000 + i)
        call_id = secrets.token_hex(16)
        await store.start_call(
            CallStart(
                call_id,
                f"seed.{i}",
                Direction.INBOUND,
                "service",
                customer,
                callflows.SERVICE,
                at,
                customer=customer,
            )
        )
        await store.commit_decision(
            DecisionRecord(
                call_id,
                Decision.RECORD,
                LegalBasis.CONSENT,
                "1",
                "seed",
                "callrec-consent-question",
                "ab" * 32,
                at + timedelta(seconds=12),
            )
        )
        source = spool / f"{call_id}.wav"
        await store.set_recording_file(call_id, str(source))
        source.write_bytes(_wav())
        await store.end_call(call_id, at + timedelta(minutes=3), Outcome.ANSWERED)
        row = await store.ingest(call_id, source, at + timedelta(minutes=4))
        assert row is not None
        ids.add(row.id)
        if not due:
            withdrawing.append(customer)
    return ids, withdrawing


async def _maintain(
    data_dir: Path, ledger: LedgerConfig | None, customers: list[str], now: datetime, order: int
) -> None:
    """One more node: sweeps and withdrawals, in its own order, while the calls run."""
    async with await open_ledger(data_dir, POLICY, ledger) as store:
        for i, customer in enumerate(customers if order == 0 else reversed(customers)):
            if i % 5 == order:
                await store.sweep(now)
            await store.withdraw(customer, WithdrawalVia.EMAIL, now, "dpo", now)
        await store.sweep(now)


async def _start(
    node: int,
    data_dir: Path,
    base: Path,
    pbx: callflows.TimedPbx,
    url: str,
    ledger: LedgerConfig | None,
) -> subprocess.Popen[bytes]:
    spool = base / f"spool-{node}"
    config = base / f"node-{node}.toml"
    config.write_text(f'[storage]\nspool_dir = "{spool}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
    env.update(
        CALLREC_CONFIG=str(config),
        CALLREC_DATA_DIR=str(data_dir),
        CALLREC_ARI_URL=url,
        CALLREC_ARI_USER=callflows.USER,
        CALLREC_ARI_PASSWORD=pbx.password,
        # Nodes on one ledger each need an id of their own (they share a host and data
        # directory here, which would give them one): a second with the same id is refused.
        CALLREC_CONTROLLER_ID=f"node-{node}",
    )
    if ledger is not None and ledger.url is not None:
        env["CALLREC_LEDGER_URL"] = ledger.url
    log = base / f"node-{node}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", callflows.SERVE, "serve"],
            cwd=base,
            env=child_env(env),
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    deadline = time.monotonic() + callflows.CONNECT_TIMEOUT
    while not pbx.connected(callflows.APP):
        if proc.poll() is not None or time.monotonic() > deadline:
            await callflows._stop(proc)
            raise CallrecError(f"node {node} did not connect: {log.read_text()[-600:]}")
        await asyncio.sleep(0.05)
    return proc


async def _stored(spools: list[Path], expected: int) -> None:
    deadline = time.monotonic() + callflows.STALL_SECONDS * 3
    while time.monotonic() < deadline:
        if all(not s.exists() or not any(s.iterdir()) for s in spools):
            return
        await asyncio.sleep(0.1)


async def _run(name: str, base: Path, per_node: int, pg_url: str | None) -> Ledgers:
    result = Ledgers(name)
    now = datetime.now(UTC)
    shared = pg_url is not None
    ledger = LedgerConfig(url=pg_url) if shared else None
    dirs = [base / "data"] * NODES if shared else [base / f"data-{k}" for k in range(NODES)]
    seed_spool = base / "seed-spool"
    seed_spool.mkdir(parents=True)
    async with await open_ledger(dirs[0], POLICY, ledger, create=True) as store:
        seeded, withdrawing = await _seed(store, seed_spool, now)
    for d in dirs[1:] if not shared else []:
        async with await open_ledger(d, POLICY, create=True):
            pass
    durations = {pid: info.duration_seconds for pid, info in load_catalog().items()}
    pbxs = [
        callflows.TimedPbx(app=callflows.APP, user=callflows.USER, prompt_durations=durations)
        for _ in range(NODES)
    ]
    urls = [await pbx.start() for pbx in pbxs]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for k in range(NODES):
            procs.append(await _start(k, dirs[k], base, pbxs[k], urls[k], ledger))
        say(f"scaleout ({name}): {NODES} nodes x {per_node} calls, sweeps and withdrawals")
        with callflows.no_collector():
            drives, _ = await asyncio.gather(
                asyncio.gather(*(callflows._drive(pbx, per_node, None) for pbx in pbxs)),
                asyncio.gather(
                    _maintain(dirs[0], ledger, withdrawing, now, 0),
                    _maintain(dirs[0], ledger, withdrawing, now, 1),
                ),
            )
        calls = [r for results, _peak in drives for r in results]
        result.recorded = sum(r.recorded_file is not None for r in calls)
        await _stored([base / f"spool-{k}" for k in range(NODES)], result.recorded)
    finally:
        for proc in procs:
            await callflows._stop(proc)
        for pbx in pbxs:
            await pbx.stop()
    started: dict[str, int] = {}
    setup: dict[str, int] = {}
    for k, pbx in enumerate(pbxs):
        run = callflows.Run("callrec", per_node, None)
        callflows._measure(run, pbx.log)
        result.digit += run.digit
        for entry in pbx.log:
            event = entry.get("event") or {}
            if entry["kind"] == "event" and event.get("type") == "StasisStart":
                started.setdefault(f"{k}:{event['channel']['id']}", int(entry["ns"]))
            elif entry.get("method") == "POST":
                parts = str(entry.get("path", "")).split("/")
                if len(parts) >= 4 and parts[1] == "channels" and parts[3] == "play":
                    setup.setdefault(f"{k}:{parts[2]}", int(entry["ns"]))
    if not setup:
        sample = [e for e in pbxs[0].log if e.get("kind") == "rest"][:5]
        raise CallrecError(f"no call was set up: {sample}")
    span = (max(setup.values()) - min(started.values())) / 1e9
    result.setups_per_second = len(setup) / span
    for k in range(NODES):
        text = (base / f"node-{k}.log").read_text(errors="replace")
        result.problems += [
            line.split(" ", 2)[-1] for line in text.splitlines() if " ERROR " in line
        ]
    async with await open_ledger(dirs[0], POLICY, ledger) as store:
        recordings = {r.id: r for r in await store.recordings(include_deleted=True)}
        entries = await store.audit_entries()
        report = await store.verify()
        since = now - timedelta(days=1)
        for i in range(LOOKUPS):
            began = time.perf_counter()
            await store.callback_candidates(
                customer_number(i % per_node), since, LegalBasis.CONSENT
            )
            result.lookups.append(time.perf_counter() - began)
    if shared:
        result.stored = sum(1 for r in recordings.values() if r.id not in seeded)
    else:
        result.stored = 0
        for d in dirs:
            async with await open_ledger(d, POLICY) as store:
                rows = await store.recordings(include_deleted=True)
                result.stored += sum(1 for r in rows if r.id not in seeded)
    deletions = Counter(e.subject for e in entries if e.action == "recording.deleted")
    result.seeded_gone = sum(1 for rid in seeded if recordings[rid].status.value == "deleted")
    result.deletions_once = all(deletions[rid] == 1 for rid in seeded)
    result.verify_ok = report.ok
    result.problems += list(report.problems)
    return result


async def run(sizes: Sizes, work: Path) -> Result:
    per_node = 5 if sizes.name == "tiny" else 250
    result = Result(
        "scaleout",
        f"Scale-out: {NODES} controllers x {per_node} calls at once, one ledger vs one each",
    )
    result.setup.append(
        f"{NODES} `callrec serve` nodes, each with its own simulated PBX; two more nodes sweep "
        f"and withdraw while the calls run; {LOOKUPS} callback look-ups afterwards"
    )
    runs = [await _run("SQLite, a ledger per node", work / "scale-sqlite", per_node, None)]
    shutil.rmtree(work / "scale-sqlite", ignore_errors=True)
    url = server_url()
    why = reachable(url)
    if why is None:
        async with database(url) as db:
            runs.append(await _run("PostgreSQL, one ledger", work / "scale-pg", per_node, db))
    else:
        result.notes.append(f"PostgreSQL not run: none at {redact(url)} ({why})")
    total = NODES * per_node
    for r in runs:
        result.add(
            Row(f"{r.name}: setups/s, {total} calls at once", f"{r.setups_per_second:,.0f}/s")
        )
        result.add(Row(f"{r.name}: digit -> decision committed p99", ms(percentile(r.digit, 99))))
        result.add(Row(f"{r.name}: callback look-up p99", ms(percentile(r.lookups, 99))))
        result.add(
            Row(
                f"{r.name}: recordings stored / recorded",
                f"{r.stored}/{r.recorded}",
                met=r.stored == r.recorded,
                target="all",
            )
        )
        result.add(
            Row(
                f"{r.name}: seeded due or withdrawn deleted once, verify clean",
                f"{r.seeded_gone}/{SEEDED}",
                met=r.seeded_gone == SEEDED and r.deletions_once and r.verify_ok,
                target="all, once",
            )
        )
        if r.problems:
            result.notes.append(f"{r.name}: {'; '.join(r.problems[:3])}")
    result.notes.append(f"{count(total)} calls alive at once across the nodes")
    return result
