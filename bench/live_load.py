"""Live load: N Local-channel callers at R calls/s against a real Asterisk, `callrec serve`
beside a bare ARI app doing the same REST work (`bench.bare_app`), runs alternated.

Opt-in, like the live tests: it runs only with `CALLREC_TEST_ARI_URL` (and
`CALLREC_TEST_ARI_USER`, `CALLREC_TEST_ARI_PASSWORD`) naming an Asterisk that runs this
repository's asterisk-conf; otherwise it says so and does nothing.

    python -m bench.live_load [--callers 200] [--rates 20 40 100] [--rounds 2]
                              [--kinds callrec bare] [--py-spy PY_SPY]

With `--py-spy`, each run of the app is sampled by py-spy (attached by pid, non-blocking, so
the app's own CPU figures stay its own) and the collapsed stacks are left in the work
directory (`--keep`) as `profile.txt`.

Each caller is `Local/press1@callrec-test-caller` dialled into the service line: it presses 1
three seconds after it is answered. The app under test owns the Stasis app `callrec`; an
observer app subscribed to each caller's channel records Asterisk's own event timestamps: the digit
(`ChannelDtmfReceived`), leaving Stasis (the `STASISSTATUS` variable Stasis() sets on its
way out), `MixMonitor` and `Queue` starting, and the channel's end. The callers are hung up
by the benchmark once all reached the queue (or after a deadline); one that ended before
reaching it was dropped. Controller CPU per call is read from /proc over the whole run,
teardown included, and split into the event loop's thread and the others (user + system);
Asterisk's "HTTP session count exceeded" warnings are counted in its log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from agi.ari import AriClient
from bench.callflows import cpu_seconds
from bench.figures import percentile
from bench.ledger_fill import customer_number
from bench.machine import describe
from bench.processes import child_env
from bench.progress import say
from flows.errors import AsteriskError
from flows.policy import Policy
from storage.sqlite import LEDGER_FILE, SqliteStore

APP = "callrec"
OBSERVER = "callrec-bench-observer"
CALLER = "Local/{}@callrec-test-caller"
# Callers that hang up on their own (press 1, then leave 8 s later): no hang-up request per
# caller, each of which makes Asterisk look the channel up among all of them (by unique id a
# scan that locks every channel, while channels being destroyed wait for that container).
SELF_ENDING = "press1-giveup"
CONTEXT = "callrec-inbound"
SERVICE = "040404040"
SERVE = "import sys; from callrec.cli import main; sys.exit(main())"
ASTERISK = "/opt/asterisk/sbin/asterisk"
ASTERISK_LOG = Path("/opt/asterisk/var/log/asterisk/messages.log")
SESSION_WARNING = "HTTP session count exceeded"
QUEUE_DEADLINE = 30.0  # seconds after the last caller for everyone to reach the queue
CONNECT_TIMEOUT = 30.0
STARTUP_SECONDS = 4.0
LOG_NAME = "app.log"


@dataclass(slots=True)
class Caller:
    digit: datetime | None = None
    left_stasis: datetime | None = None
    mixmonitor: bool = False
    queue: bool = False
    ended_before_queue: bool = False
    stasis_failed: bool = False  # the app was not there: Stasis() returned at once


@dataclass(slots=True)
class Observer:
    """Asterisk's events for every channel, reduced to what the figures need."""

    callers: dict[str, Caller] = field(default_factory=dict)
    events: int = 0
    mine: set[str] = field(default_factory=set)  # caller channels of the current run
    on_queue: Callable[[str], None] | None = None

    def see(self, data: Mapping[str, Any]) -> None:
        self.events += 1
        channel = data.get("channel")
        if not isinstance(channel, dict):
            return
        channel_id = channel.get("id")
        if channel_id not in self.mine:
            return
        caller = self.callers.setdefault(channel_id, Caller())
        kind = data.get("type")
        when = _when(data.get("timestamp"))
        if kind == "ChannelDtmfReceived" and data.get("digit") == "1":
            caller.digit = caller.digit or when
        elif kind == "ChannelVarset" and data.get("variable") == "STASISSTATUS":
            # Stasis() clears it on the way in and sets it on the way out.
            if data.get("value") == "SUCCESS":
                caller.left_stasis = caller.left_stasis or when
            elif data.get("value") == "FAILED":
                caller.stasis_failed = True
        elif kind == "ChannelDialplan":
            app = data.get("dialplan_app")
            if app == "MixMonitor":
                caller.mixmonitor = True
            elif app == "Queue" and not caller.queue:
                caller.queue = True
                if self.on_queue is not None:
                    self.on_queue(channel_id)
        elif kind in ("ChannelHangupRequest", "ChannelDestroyed") and not caller.queue:
            caller.ended_before_queue = True


def _when(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    with contextlib.suppress(ValueError):
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")
    return None


@dataclass(slots=True)
class Run:
    kind: str
    rate: float
    callers: int
    digit_to_left: list[float] = field(default_factory=list)  # seconds
    reached_queue: int = 0
    dropped: int = 0
    stasis_failed: int = 0
    cpu_per_call: float = 0.0
    session_warnings: int = 0
    threads: str = ""  # CPU per call of each thread group, user + system
    ledger: dict[str, int] = field(default_factory=dict)


async def observe(url: str, user: str, password: str, observer: Observer) -> None:
    # Subscribed to each caller's channel only (`watch`), not to everything: every event
    # Asterisk turns into JSON for an observer is work it does not do for the app under test.
    ws_url = url.replace("http", "ws", 1) + f"/events?app={OBSERVER}"
    headers = {"Authorization": aiohttp.encode_basic_auth(user, password)}
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(ws_url, headers=headers, max_msg_size=0) as socket,
    ):
        async for message in socket:
            if message.type == aiohttp.WSMsgType.TEXT:
                observer.see(json.loads(message.data))


async def start_app(
    kind: str, url: str, user: str, password: str, work: Path
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
    work.mkdir(parents=True)
    if kind == "callrec":
        env.update(
            CALLREC_DATA_DIR=str(work),
            CALLREC_ARI_URL=url,
            CALLREC_ARI_USER=user,
            CALLREC_ARI_PASSWORD=password,
        )
        argv = [sys.executable, "-c", SERVE, "serve"]
        store = await SqliteStore.open(work, Policy(), create=True)
        await store.close()
    else:
        spool = work / "spool"
        spool.mkdir()
        argv = [sys.executable, "-m", "bench.bare_app", url, user, APP, str(spool)]
    with (work / LOG_NAME).open("wb") as log_file:
        proc = subprocess.Popen(
            argv,
            cwd=work,
            env=child_env(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    assert proc.stdin is not None
    proc.stdin.write(password.encode() + b"\n")
    proc.stdin.close()
    return proc


def thread_times(pid: int) -> dict[str, tuple[int, int]]:
    """User and system CPU ticks of `pid`'s event loop thread (its main thread) and of its
    other threads (the ledger's, the file workers'), from /proc."""
    times: dict[str, tuple[int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            text = (task / "stat").read_text(encoding="ascii")
            name = "main" if task.name == str(pid) else "other threads"
            fields = text[text.rindex(")") + 2 :].split()
            user, system = times.get(name, (0, 0))
            times[name] = (user + int(fields[11]), system + int(fields[12]))
    return times


def thread_split(
    before: Mapping[str, tuple[int, int]], after: Mapping[str, tuple[int, int]], calls: int
) -> str:
    """CPU per call of each thread group, user + system, in ms (10 ms ticks, so coarse)."""
    tick = 1000 / os.sysconf("SC_CLK_TCK") / max(calls, 1)
    parts = []
    for name, (user, system) in sorted(after.items()):
        was_user, was_system = before.get(name, (0, 0))
        parts.append(f"{name} {(user - was_user) * tick:.1f}u+{(system - was_system) * tick:.1f}s")
    return ", ".join(parts)


async def stop_app(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)


async def wait_registered(client: AriClient, proc: subprocess.Popen[bytes], work: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_TIMEOUT
    while not await client.application_registered():
        if proc.poll() is not None or loop.time() > deadline:
            tail = (work / LOG_NAME).read_text(errors="replace")[-800:]
            raise SystemExit(f"live_load: the app did not connect: {tail}")
        await asyncio.sleep(0.05)


async def hang_up_all(client: AriClient, limit: float = 120.0) -> None:
    """Hang every channel up, again and again until none is left: a busy Asterisk may still
    be creating some (a queue's member calls) while the first request runs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while await _channels_left(client):
        if loop.time() > deadline:
            raise SystemExit("live_load: Asterisk keeps channels that will not hang up")
        await asyncio.to_thread(
            subprocess.run,
            [ASTERISK, "-rx", "channel request hangup all"],
            capture_output=True,
            check=False,
        )
        await asyncio.sleep(2.0)


async def _channels_left(client: AriClient) -> bool:
    """Whether Asterisk has channels; an Asterisk too busy to answer counts as having some."""
    try:
        return bool(await client.list_channels())
    except AsteriskError:
        await asyncio.sleep(1.0)
        return True


def _log_size() -> int:
    with contextlib.suppress(OSError):
        return ASTERISK_LOG.stat().st_size
    return 0


def _session_warnings(since: int) -> int:
    with contextlib.suppress(OSError), ASTERISK_LOG.open("rb") as handle:
        handle.seek(since)
        return handle.read().decode(errors="replace").count(SESSION_WARNING)
    return 0


def _ledger(work: Path, observer: Observer) -> dict[str, int]:
    """What the controller's ledger says, checked against what Asterisk did."""
    database = work / LEDGER_FILE
    if not database.exists():
        return {}
    with contextlib.closing(sqlite3.connect(database)) as db:
        rows = db.execute(
            "SELECT call_id, channel_id, decision, reason, outcome FROM calls"
        ).fetchall()
        marked = {
            subject
            for (subject,) in db.execute(
                "SELECT subject FROM audit WHERE action = 'recording.not_started'"
            )
        }
        # A stored recording proves MixMonitor ran where a stalled Asterisk's events to the
        # observer came too late to show it.
        stored = {call_id for (call_id,) in db.execute("SELECT call_id FROM recordings")}
    record = [r for r in rows if r[2] == "record"]
    recorded = [
        r for r in record if observer.callers.get(r[1], Caller()).mixmonitor or r[0] in stored
    ]
    unmarked = [r for r in record if r not in recorded and r[0] not in marked]
    return {
        "calls": len(rows),
        "record": len(record),
        "mixmonitor": len(recorded),
        "marked_unrecorded": len([r for r in record if r[0] in marked]),
        "record_without_outcome": len(unmarked),
        "shed": len([r for r in rows if (r[3] or "").startswith("shed")]),
        "no_end": len([r for r in rows if r[4] is None]),
    }


def start_profiler(py_spy: str | None, pid: int, work: Path) -> subprocess.Popen[bytes] | None:
    if py_spy is None:
        return None
    # Per thread: the event loop, the ledger's thread and the file threads apart.
    argv = [py_spy, "record", "--pid", str(pid), "--nonblocking", "--rate", "1000", "--threads"]
    argv += ["--format", "raw", "--output", str(work / "profile.txt")]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def stop_profiler(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is not None and profiler.poll() is None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(profiler.wait, 30)


async def one_run(
    kind: str,
    rate: float,
    n: int,
    client: AriClient,
    observer: Observer,
    credentials: tuple[str, str, str],
    work: Path,
    watch: AriClient,
    py_spy: str | None = None,
    caller: str = "press1",
) -> Run:
    url, user, password = credentials
    run = Run(kind, rate, n)
    await hang_up_all(client)  # nothing left over from an earlier run
    proc = await start_app(kind, url, user, password, work)
    try:
        await wait_registered(client, proc, work)
        # Asterisk lists an app a while after its socket closed (inactive, until cleaned
        # up), so being listed does not prove the new process is connected: the time it
        # takes to start does ("Stasis failed" in the table would show otherwise).
        await asyncio.sleep(STARTUP_SECONDS)
        profiler = start_profiler(py_spy, proc.pid, work)
        cpu_before = cpu_seconds(proc.pid)
        threads_before = thread_times(proc.pid)
        log_from = _log_size()
        observer.callers.clear()
        observer.mine.clear()
        loop = asyncio.get_running_loop()
        began = loop.time()

        async def place(k: int) -> None:
            with contextlib.suppress(Exception):
                channel = await client.originate(
                    CALLER.format(caller),
                    extension=SERVICE,
                    context=CONTEXT,
                    priority=1,
                    caller_id=customer_number(k),
                )
                observer.mine.add(str(channel["id"]))
                await watch.subscribe(str(channel["id"]))

        async def hang_up_in_queue(channel_id: str) -> None:
            with contextlib.suppress(Exception):
                await client.hangup(channel_id)

        hanging_up: list[asyncio.Task[None]] = []

        def reached(channel_id: str) -> None:
            # A caller who reached the queue has done its part: it hangs up there, as
            # callers do, so that Asterisk is not left with every caller of the run at once.
            hanging_up.append(loop.create_task(hang_up_in_queue(channel_id)))

        observer.on_queue = None if caller == SELF_ENDING else reached

        placing = []
        for k in range(n):
            delay = began + k / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            placing.append(loop.create_task(place(k)))
        await asyncio.gather(*placing)
        deadline = loop.time() + QUEUE_DEADLINE
        while loop.time() < deadline:
            done = [c for c in observer.callers.values() if c.queue or c.ended_before_queue]
            if len(done) >= len(observer.mine):
                break
            await asyncio.sleep(0.2)
        await asyncio.gather(*hanging_up)
        await hang_up_all(client)
        await asyncio.sleep(2.0)  # the app finishes its calls (ledger, files)
        run.cpu_per_call = (cpu_seconds(proc.pid) - cpu_before) / n
        run.threads = thread_split(threads_before, thread_times(proc.pid), n)
        run.session_warnings = _session_warnings(log_from)
        await stop_profiler(profiler)
    finally:
        await stop_app(proc)
    callers = [observer.callers.get(c, Caller()) for c in observer.mine]
    run.reached_queue = sum(c.queue for c in callers)
    run.dropped = sum(c.ended_before_queue for c in callers)
    run.stasis_failed = sum(c.stasis_failed for c in callers)
    run.digit_to_left = [
        (c.left_stasis - c.digit).total_seconds()
        for c in callers
        if c.digit is not None and c.left_stasis is not None and c.left_stasis >= c.digit
    ]
    if kind == "callrec":
        run.ledger = _ledger(work, observer)
    return run


def _ms(samples: list[float], p: float) -> str:
    return f"{percentile(samples, p) * 1000:.0f}" if samples else "-"


def table(runs: list[Run]) -> str:
    lines = [
        "| offered | app | digit -> left Stasis p50 / p99 (ms) | reached queue | dropped "
        "| Stasis failed | CPU per call (ms) | session warnings | ledger |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        ledger = ", ".join(f"{k} {v}" for k, v in run.ledger.items()) or "-"
        lines.append(
            f"| {run.rate:.0f}/s | {run.kind} | {_ms(run.digit_to_left, 50)} / "
            f"{_ms(run.digit_to_left, 99)} | {run.reached_queue} of {run.callers} | "
            f"{run.dropped} | {run.stasis_failed} | {run.cpu_per_call * 1000:.1f} | "
            f"{run.session_warnings} | "
            f"{ledger} |"
        )
    lines += ["", "CPU per call by thread (ms, user + system, 10 ms ticks):"]
    lines += [f"- {run.rate:.0f}/s {run.kind}: {run.threads}" for run in runs]
    pairs = ratios(runs)
    if pairs:
        lines += ["", "callrec / bare, run by run in each round (median):"]
        lines += [f"- {line}" for line in pairs]
    return "\n".join(lines)


def ratios(runs: list[Run]) -> list[str]:
    """Per rate, the controller's CPU per call and digit -> left Stasis p99 over the bare
    app's, for each round's pair of runs, and their medians."""
    lines = []
    for rate in sorted({run.rate for run in runs}):
        mine = [r for r in runs if r.rate == rate and r.kind == "callrec"]
        bare = [r for r in runs if r.rate == rate and r.kind == "bare"]
        pairs = list(zip(mine, bare, strict=False))
        if not pairs:
            continue
        cpu = [a.cpu_per_call / b.cpu_per_call for a, b in pairs if b.cpu_per_call > 0]
        p99 = [
            percentile(a.digit_to_left, 99) / percentile(b.digit_to_left, 99)
            for a, b in pairs
            if a.digit_to_left and b.digit_to_left and percentile(b.digit_to_left, 99) > 0
        ]
        for name, values in (("CPU per call", cpu), ("digit -> left Stasis p99", p99)):
            if values:
                shown = ", ".join(f"{v:.2f}x" for v in values)
                lines.append(f"{rate:.0f}/s {name}: {shown} ({statistics.median(values):.2f}x)")
    return lines


async def run_all(args: argparse.Namespace, credentials: tuple[str, str, str]) -> list[Run]:
    url, user, password = credentials
    observer = Observer()
    work = Path(tempfile.mkdtemp(prefix="callrec-live-load-"))
    if args.keep:
        say(f"live load: work directory {work}")
    runs: list[Run] = []
    # Named after the app under test: its REST calls (originate, the registration check)
    # concern that app; the observer has its own socket.
    async with (
        AriClient(url, user, password, APP) as client,
        AriClient(url, user, password, OBSERVER) as watch,
    ):
        watcher = asyncio.get_running_loop().create_task(observe(url, user, password, observer))
        try:
            await asyncio.sleep(1.0)
            if args.warmup > 0:
                # The first calls after Asterisk starts are slower for whichever app takes
                # them; without this, the first app of every batch would pay for it.
                say(f"live load: warm-up, bare at {args.rates[0]:g}/s, {args.warmup} callers")
                await one_run(
                    "bare",
                    args.rates[0],
                    args.warmup,
                    client,
                    observer,
                    credentials,
                    work / "warm-up",
                    watch,
                    None,
                    args.caller,
                )
            for rate in args.rates:
                for round_ in range(args.rounds):
                    kinds = args.kinds if round_ % 2 == 0 else args.kinds[::-1]
                    for kind in kinds:
                        say(f"live load: {kind} at {rate:g}/s, {args.callers} callers")
                        run = await one_run(
                            kind,
                            rate,
                            args.callers,
                            client,
                            observer,
                            credentials,
                            work / f"{kind}-{rate:g}-{round_}",
                            watch,
                            args.py_spy,
                            args.caller,
                        )
                        runs.append(run)
                        print(table([run]).splitlines()[-1], flush=True)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await watcher
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.live_load", description=__doc__)
    parser.add_argument("--callers", type=int, default=200)
    parser.add_argument("--rates", type=float, nargs="+", default=[20.0, 40.0, 100.0])
    parser.add_argument("--rounds", type=int, default=2, help="runs of each app per rate")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--kinds", nargs="+", choices=("callrec", "bare"), default=["callrec", "bare"]
    )
    parser.add_argument("--py-spy", metavar="PY_SPY", help="sample each app run with py-spy")
    parser.add_argument(
        "--warmup",
        type=int,
        default=100,
        help="callers of a bare-app run before the measured ones, not counted (0: none)",
    )
    parser.add_argument(
        "--caller",
        choices=("press1", SELF_ENDING),
        default="press1",
        help=f"{SELF_ENDING}: callers leave 8 s after pressing 1; none is hung up by the bench",
    )
    args = parser.parse_args(argv)
    url = os.environ.get("CALLREC_TEST_ARI_URL", "")
    if not url:
        print("live_load: skipped: set CALLREC_TEST_ARI_URL (and _USER, _PASSWORD) to run")
        return 0
    credentials = (
        url.rstrip("/"),
        os.environ.get("CALLREC_TEST_ARI_USER", "callrec"),
        os.environ.get("CALLREC_TEST_ARI_PASSWORD", ""),
    )
    print(f"machine: {describe(Path(tempfile.gettempdir()))}")
    runs = asyncio.run(run_all(args, credentials))
    print("\n" + table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
