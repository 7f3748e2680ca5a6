"""Benchmark 1: calls through the controller against the simulated PBX on loopback.

The controller is `callrec serve` itself (the console command's `main`, configured through
the environment as in production: its own data directory, SQLite ledger, spool and store),
in a child process pinned to core 0. The simulated PBX (`agi.simpbx`) runs in this process,
pinned to core 1, and plays the callers: each dials a service line, presses 1 two seconds
into the consent question, waits a second in the queue, talks three seconds to an agent and
hangs up; MixMonitor's file is then ingested by the controller.

Each size runs twice: all calls placed at once (how many setups per second the controller
manages) and paced at the target of 500 calls per second, or less where the simulator
itself cannot drive that many (latency under load), always with every call alive at the
same time. The baseline is the same simulator driving a no-op
ARI app (`bench.noop_app`: answer, continue), also pinned to core 0: the floor.

Latencies are read off the simulator's log, stamped with a nanosecond clock: StasisStart sent
to the play request received; the digit's event sent to the first request the controller
makes only after the decision is committed to the ledger (the recording's call id or file
variable; the subscription is made earlier, while the prompt plays).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agi.simpbx import CallerScript, CallResult, SimulatedPbx
from bench.figures import Result, Row, count, ms, percentile, ratio
from bench.ledger_fill import customer_number
from bench.processes import child_env
from bench.progress import say
from bench.sizes import Sizes
from flows.errors import CallrecError
from flows.policy import Policy
from prompts.catalog import load_catalog
from storage.sqlite import RECORDINGS_DIR, SqliteStore

APP = "callrec"
USER = "callrec"
SERVICE = "+38640404040"
CONTROLLER_CORE = 0
PBX_CORE = 1
SETUP_RATE = 500.0  # calls per second offered in the paced runs: the target
PACE_SHARE = 0.8  # ... or this share of what the floor manages, if that is less
TARGET_SETUPS = 500.0  # setups per second (issue 8)
TARGET_P99 = 0.005  # seconds from StasisStart to the play request (issue 8)
SCRIPT = CallerScript(
    keys=((2.0, "1"),), agent_answers_after=1.0, give_up_after=60.0, talk_seconds=3.0
)
CONNECT_TIMEOUT = 30.0  # seconds for a controller to start and open its events socket
SETTLE_TIMEOUT = 120.0  # seconds for every call to end
STALL_SECONDS = 10.0  # no recording stored for this long after the calls ended: none will be
STOP_TIMEOUT = 30.0
LOG_NAME = "controller.log"
SERVE = "import sys; from callrec.cli import main; sys.exit(main())"
# The variables the controller sets only once the decision is committed and the file named.
AFTER_COMMIT = frozenset({"CALLREC_CALL_ID", "CALLREC_FILE"})


def variables_named(name: str) -> frozenset[str]:
    """The variables one variable request sets: `X`, or each of `ARRAY(X,Y,...)`."""
    if name.startswith("ARRAY(") and name.endswith(")"):
        return frozenset(name[len("ARRAY(") : -1].split(","))
    return frozenset({name})


class TimedPbx(SimulatedPbx):
    """The simulated PBX, its log entries also stamped with a nanosecond clock (`ns`): the
    log's own `t` is rounded to milliseconds, too coarse for a 5 ms target."""

    def _record(self, entry: dict[str, Any]) -> None:
        super()._record({**entry, "ns": time.perf_counter_ns()})


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads, exited ones too.

    Read from the process's CPU-time clock (Linux numbers it `(~pid << 3) | 2`, as glibc's
    clock_getcpuclockid does), which counts nanoseconds; else from /proc in 10 ms ticks."""
    with contextlib.suppress(OSError, OverflowError):
        return time.clock_gettime(((~pid) << 3) | 2)
    text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def pinned(core: int) -> Iterator[bool]:
    """Pin this thread (the event loop's) to `core` for the block; False when the machine
    has no such core (then nothing is pinned)."""
    before = os.sched_getaffinity(0)
    if core not in before or len(before) < 2:
        yield False
        return
    os.sched_setaffinity(0, {core})
    try:
        yield True
    finally:
        os.sched_setaffinity(0, before)


@contextlib.contextmanager
def no_collector() -> Iterator[None]:
    """The simulator's cycle collector held off while it drives calls (for the callrec and
    the no-op runs alike): its full collections over the log and a thousand calls' objects
    stalled the simulator itself for up to 150 ms, and every call in flight then showed that
    stall as the controller's latency. Collected once afterwards."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


@dataclass(slots=True)
class Run:
    kind: str  # "callrec" or "noop"
    calls: int
    rate: float | None  # calls placed per second; None: all at once
    setup: list[float] = field(default_factory=list)  # StasisStart -> play (noop: continue)
    reaction: list[float] = field(default_factory=list)  # StasisStart -> first request
    digit: list[float] = field(default_factory=list)  # digit -> first request after commit
    digit_to_record: list[float] = field(default_factory=list)  # digit -> CALLREC_RECORD set
    setups_per_second: float = 0.0
    cpu_seconds: float = 0.0
    peak_live: int = 0
    wall_seconds: float = 0.0
    pbx_busy: float = 0.0  # the simulator's CPU time over wall time (1.0: its core saturated)
    set_up: int = 0  # calls that got their prompt (noop: their continue)
    recorded: int = 0  # calls MixMonitor recorded (each caller pressed 1)
    stored: int = 0  # recordings the controller moved into its store
    problems: list[str] = field(default_factory=list)  # the controller's warnings and errors


async def _start_controller(
    kind: str, url: str, password: str, data_dir: Path, pbx: SimulatedPbx
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
    if kind == "callrec":
        env.update(
            CALLREC_DATA_DIR=str(data_dir),
            CALLREC_ARI_URL=url,
            CALLREC_ARI_USER=USER,
            CALLREC_ARI_PASSWORD=password,
        )
        argv = [sys.executable, "-c", SERVE, "serve"]
        # Made beforehand, as `callrec init` makes it: serve warns about a store it has to
        # create, and the warnings it logs count as the run's problems.
        store = await SqliteStore.open(data_dir, Policy(), create=True)
        await store.close()
    else:
        argv = [sys.executable, "-m", "bench.noop_app", url, USER, APP]
    data_dir.mkdir(parents=True, exist_ok=True)
    # Its log goes to a file: a pipe nobody reads would fill and freeze the controller.
    with (data_dir / LOG_NAME).open("wb") as log_file:
        proc = subprocess.Popen(
            argv,
            cwd=data_dir,  # no callrec.toml there: built-in defaults and the environment
            env=child_env(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    # Pinned at once, before its interpreter has started any thread (threads inherit it).
    with contextlib.suppress(OSError):
        os.sched_setaffinity(proc.pid, {CONTROLLER_CORE})
    assert proc.stdin is not None
    proc.stdin.write(password.encode() + b"\n")
    proc.stdin.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_TIMEOUT
    while not pbx.connected(APP):
        if proc.poll() is not None or loop.time() > deadline:
            await _stop(proc)
            raise CallrecError(f"the {kind} controller did not connect: {_tail(data_dir)}")
        await asyncio.sleep(0.02)
    return proc


def _tail(data_dir: Path) -> str:
    with contextlib.suppress(OSError):
        return (data_dir / LOG_NAME).read_text(errors="replace").strip()[-800:]
    return ""


def _warnings(data_dir: Path) -> list[str]:
    """The controller's log lines, each without its time stamp."""
    with contextlib.suppress(OSError):
        text = (data_dir / LOG_NAME).read_text(errors="replace")
        return [
            line.split(" ", 2)[-1]
            for line in text.splitlines()
            if " WARNING " in line or " ERROR " in line
        ]
    return []


async def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)


async def _drive(pbx: SimulatedPbx, n: int, rate: float | None) -> tuple[list[CallResult], int]:
    """Place `n` calls (at `rate` per second, or all at once); their results and the most
    calls that were alive at one time."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    changes: list[tuple[float, int]] = []
    calls = []
    for k in range(n):
        if rate is not None:
            delay = began + k / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        call = await pbx.place_call(SERVICE, customer_number(k), SCRIPT)
        changes.append((loop.time(), 1))
        call.done.add_done_callback(lambda _: changes.append((loop.time(), -1)))
        calls.append(call)
    timeout = SETTLE_TIMEOUT + n / (rate or SETUP_RATE)
    results = await asyncio.wait_for(asyncio.gather(*(c.done for c in calls)), timeout)
    live = peak = 0
    for _, step in sorted(changes):
        live += step
        peak = max(peak, live)
    return list(results), peak


def _recordings(data_dir: Path) -> int:
    root = data_dir / RECORDINGS_DIR
    return sum(len(names) for _, _, names in os.walk(root)) if root.exists() else 0


async def _settled(data_dir: Path, n: int) -> int:
    """Wait until the controller has stored `n` recordings and emptied its spool, or has
    stored nothing more for `STALL_SECONDS`; how many it stored."""
    loop = asyncio.get_running_loop()
    spool = data_dir / "spool"
    stored, since = -1, loop.time()
    while True:
        now_stored = await asyncio.to_thread(_recordings, data_dir)
        left = len(list(spool.iterdir())) if spool.exists() else 0
        if now_stored >= n and left == 0:
            return now_stored
        if now_stored != stored:
            stored, since = now_stored, loop.time()
        elif loop.time() - since > STALL_SECONDS:
            return stored
        await asyncio.sleep(0.1)


def _measure(run: Run, log: list[dict[str, Any]]) -> None:
    """Fill `run`'s latencies from the simulator's log (ns stamps)."""
    started: dict[str, int] = {}
    dtmf: dict[str, int] = {}
    setup: dict[str, int] = {}
    reaction: dict[str, int] = {}
    committed: dict[str, int] = {}
    record_set: dict[str, int] = {}
    setup_suffix = "/play" if run.kind == "callrec" else "/continue"
    for entry in log:
        ns = int(entry["ns"])
        if entry["kind"] == "event":
            event = entry["event"]
            channel = str((event.get("channel") or {}).get("id", ""))
            if event.get("type") == "StasisStart":
                started.setdefault(channel, ns)
            elif event.get("type") == "ChannelDtmfReceived":
                dtmf.setdefault(channel, ns)
            continue
        path = str(entry.get("path", ""))
        params = entry.get("params") or {}
        if entry.get("method") != "POST":
            continue
        if path.startswith("/applications/"):
            source = str(params.get("eventSource", ""))
            channel = source.removeprefix("channel:")
            if channel in dtmf:
                committed.setdefault(channel, ns)
            continue
        parts = path.split("/")
        if len(parts) < 4 or parts[1] != "channels":
            continue
        channel, action = parts[2], "/" + parts[3]
        if channel not in started:
            continue
        reaction.setdefault(channel, ns)
        if action == setup_suffix:
            setup.setdefault(channel, ns)
        if action == "/variable" and channel in dtmf:
            names = variables_named(str(params.get("variable", "")))
            if "CALLREC_RECORD" in names:
                record_set.setdefault(channel, ns)
            if names & AFTER_COMMIT:
                committed.setdefault(channel, ns)
    if not setup:
        raise CallrecError(f"none of the {run.calls} calls through the {run.kind} app was set up")
    run.set_up = len(setup)
    run.setup = [(setup[c] - started[c]) / 1e9 for c in setup]
    run.reaction = [(reaction[c] - started[c]) / 1e9 for c in reaction]
    run.digit = [(committed[c] - dtmf[c]) / 1e9 for c in committed]
    run.digit_to_record = [(record_set[c] - dtmf[c]) / 1e9 for c in record_set]
    span = (max(setup.values()) - min(started[c] for c in setup)) / 1e9
    run.setups_per_second = len(setup) / span if span > 0 else float("inf")


_IDS = re.compile(r"\b[0-9a-f]{32}\b|\b\d{6,}\.\d+\b")


def summary(problems: list[str], top: int = 3) -> str:
    """The most frequent log lines, ids blanked, with their counts."""
    counts = Counter(_IDS.sub("…", line) for line in problems)
    return "; ".join(f"{n} x {line}" for line, n in counts.most_common(top))


async def _one(kind: str, n: int, rate: float | None, scale: float, work: Path) -> Run:
    catalog = load_catalog()
    durations = {pid: info.duration_seconds for pid, info in catalog.items()}
    pbx = TimedPbx(app=APP, user=USER, prompt_durations=durations, time_scale=scale)
    url = await pbx.start()
    data_dir = work / f"{kind}-{n}-{'burst' if rate is None else f'{rate:.0f}'}"
    run = Run(kind, n, rate)
    proc = None
    try:
        proc = await _start_controller(kind, url, pbx.password, data_dir, pbx)
        cpu_before, pbx_before = cpu_seconds(proc.pid), time.process_time()
        began = time.perf_counter()
        with no_collector():
            results, run.peak_live = await _drive(pbx, n, rate)
        if kind == "callrec":
            # Every caller presses 1: a call not recorded went on unrecorded after a fault.
            run.recorded = sum(r.recorded_file is not None for r in results)
            run.stored = await _settled(data_dir, run.recorded)
        run.wall_seconds = time.perf_counter() - began
        run.cpu_seconds = cpu_seconds(proc.pid) - cpu_before
        run.pbx_busy = (time.process_time() - pbx_before) / run.wall_seconds
        if proc.poll() is not None:
            raise CallrecError(f"the {kind} controller exited: {_tail(data_dir)}")
    finally:
        if proc is not None:
            await _stop(proc)
        await pbx.stop()
    run.problems = _warnings(data_dir)
    _measure(run, pbx.log)
    return run


def _ms(samples: list[float], p: float) -> tuple[str, float | None]:
    if not samples:
        return "n/a", None
    value = percentile(samples, p)
    return ms(value), value


async def run(sizes: Sizes, work: Path) -> Result:
    base = work / "callflows"
    runs: dict[tuple[str, int, bool], Run] = {}
    with pinned(PBX_CORE) as is_pinned:
        for n in sizes.concurrent_calls:
            for kind in ("callrec", "noop"):
                say(f"callflows: {count(n)} calls at once through the {kind} app")
                runs[(kind, n, False)] = await _one(kind, n, None, sizes.call_time_scale, base)
            # Latency is measured at a load the floor itself sustains: the target rate, or
            # less where the simulator and the no-op app together cannot reach it.
            rate = min(SETUP_RATE, PACE_SHARE * runs[("noop", n, False)].setups_per_second)
            for kind in ("callrec", "noop"):
                say(f"callflows: {count(n)} calls at {rate:.0f}/s through the {kind} app")
                runs[(kind, n, True)] = await _one(kind, n, rate, sizes.call_time_scale, base)

    result = Result("callflows", "Call flows through the controller on loopback")
    result.setup += [
        "controller: `callrec serve` (SQLite ledger, spool, store) in a child process "
        + (
            f"pinned to core {CONTROLLER_CORE}; the simulated PBX here, pinned to core {PBX_CORE}"
            if is_pinned
            else "(not pinned: fewer than two cores)"
        ),
        "each call: service line, 1 pressed 2 s into the question, 1 s in the queue, "
        f"{SCRIPT.talk_seconds:g} s talking (times x {sizes.call_time_scale:g}), recorded and "
        "ingested",
        f"paced runs offer {SETUP_RATE:.0f} calls/s (the target) or, if less, "
        f"{PACE_SHARE:.0%} of the setups/s the simulator and the no-op app reach together",
    ]
    for n in sizes.concurrent_calls:
        burst, paced = runs[("callrec", n, False)], runs[("callrec", n, True)]
        floor_burst, floor_paced = runs[("noop", n, False)], runs[("noop", n, True)]
        rate = paced.rate or SETUP_RATE
        result.setup.append(
            f"{count(n)} calls: {burst.peak_live} alive at once when placed together, "
            f"{paced.peak_live} when paced at {rate:.0f}/s (reached {paced.setups_per_second:,.0f}"
            f" setups/s); the simulator kept its core {max(r.pbx_busy for r in (burst, paced)):.0%}"
            " busy at most"
        )
        label = f"{count(n)} calls"
        result.add(
            Row(
                f"{label} at once: setups/s",
                f"{burst.setups_per_second:,.0f}/s",
                f"{floor_burst.setups_per_second:,.0f}/s",
                ratio(1 / burst.setups_per_second, 1 / floor_burst.setups_per_second),
                f">= {TARGET_SETUPS:.0f}/s",
                burst.setups_per_second >= TARGET_SETUPS,
            )
        )
        for p in (50, 99):
            (ours, a), (floor, b) = _ms(paced.setup, p), _ms(floor_paced.setup, p)
            result.add(
                Row(
                    f"{label} at {rate:.0f}/s: StasisStart -> play p{p}",
                    ours,
                    floor,
                    "n/a" if a is None or b is None else ratio(a, b),
                    "< 5 ms" if p == 99 else "-",
                    (a is not None and a < TARGET_P99) if p == 99 else None,
                )
            )
        for p in (50, 99):
            (ours, a), (floor, b) = _ms(paced.digit, p), _ms(floor_paced.reaction, p)
            result.add(
                Row(
                    f"{label} at {rate:.0f}/s: digit -> decision committed p{p}",
                    ours,
                    floor,
                    "n/a" if a is None or b is None else ratio(a, b),
                )
            )
        result.add(
            Row(
                f"{label}: recorded as the callers chose",
                f"{burst.recorded}/{n} at once, {paced.recorded}/{n} paced",
                target="all",
                met=burst.recorded == n and paced.recorded == n,
            )
        )
        result.add(
            Row(
                f"{label}: recordings stored",
                f"{burst.stored}/{burst.recorded} at once, {paced.stored}/{paced.recorded} paced",
                target="all",
                met=burst.stored == burst.recorded and paced.stored == paced.recorded,
            )
        )
        per_call, floor_per_call = paced.cpu_seconds / n, floor_paced.cpu_seconds / n
        result.add(
            Row(
                f"{label}: controller CPU per call",
                ms(per_call),
                ms(floor_per_call),
                ratio(per_call, floor_per_call),
            )
        )
        for each in (burst, paced):
            if each.problems:
                how = "at once" if each.rate is None else f"at {each.rate:.0f}/s"
                result.notes.append(
                    f"{label} {how}: the controller logged {len(each.problems)} warnings or "
                    f"errors: {summary(each.problems)}"
                )
    result.notes += [
        "baseline: the same simulator and calls driving bench/noop_app.py (AriClient; answers, "
        "continues), pinned the same way; for StasisStart -> play its StasisStart -> continue "
        "(also its second request), for the digit its StasisStart -> answer (one event, one "
        "reaction)",
        "digit -> decision committed: the simulator cannot see the ledger; it is measured to "
        "the controller's first recording variable (call id or file), the first request it "
        "sends only after the commit (an upper bound). Digit -> CALLREC_RECORD set, p99: "
        + ", ".join(
            f"{_ms(runs[('callrec', n, True)].digit_to_record, 99)[0]} at {count(n)}"
            for n in sizes.concurrent_calls
        ),
        "CPU per call: the controller process's user + system time (its CPU-time clock) over "
        "the paced run, from the first call to the last recording stored, divided by the calls",
    ]
    return result
