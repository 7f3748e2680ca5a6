"""The subcommands' bodies (the controller's, `serve` and `fastagi`, are in
`callrec.controller`): the composition root that wires concrete parts together.

Only this package imports concrete clients (`AriClient`, `MqttEvents`, `FastAgiServer`,
`SimulatedPbx`, the store through `storage.factory`); `agi/` and `storage/` see each other
through Protocols.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agi.ports import EventSink
from callrec import calls_cli
from callrec.cli import (
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_OK,
    now_arg,
    print_json,
    short_time,
    table,
    time_arg,
)
from callrec.config import Settings
from callrec.events import MqttEvents, NullEvents
from callrec.harness import Harness, LiveAsterisk, refuse_a_taken_app
from callrec.logs import sweep_summary
from callrec.progress import ProgressBar
from callrec.resources import scenarios_dir
from flows.errors import CallrecError
from flows.policy import Purpose
from storage import checkpoints, files
from storage.factory import SCHEMA_VERSION, ledger_version
from storage.factory import open_store as open_any_store
from storage.ports import (
    CheckpointStatus,
    RecordingRow,
    Report,
    StoreApi,
    SweepReport,
    WithdrawalVia,
)
from storage.rows import short_recording_id
from storage.values import os_error, parse_ts

log = logging.getLogger("callrec")
PROBLEMS_SHOWN = 10  # a sweep's failures listed in its text output; --json has them all


@contextlib.asynccontextmanager
async def open_store(settings: Settings, *, create: bool = False) -> AsyncIterator[StoreApi]:
    """The configured store; a path with no store is an error unless `create` (init, and
    the first start of serve or fastagi)."""
    store = await open_any_store(
        settings.data_dir,
        settings.policy,
        spool_dir=settings.spool_dir,
        create=create,
        controller_id=settings.controller_id,
        ledger_url=settings.ledger.url,
        ledger_password=settings.ledger.password,
    )
    try:
        yield store
    finally:
        await store.close()


async def make_spool(settings: Settings) -> None:
    """The MixMonitor spool, created (when missing) with the configured mode, never the
    umask's."""
    try:
        await asyncio.to_thread(files.make_dir, settings.spool_dir, settings.spool_mode)
    except OSError as error:
        raise os_error(error, f"creating the spool {settings.spool_dir}") from error


async def refuse_time_travel(store: StoreApi, args: argparse.Namespace, doing: str) -> None:
    """A store that serves real calls is only ever written at the machine's time: a `--now`
    years ahead would delete live recordings early, and one in the past would backdate the
    audit. `--now` stays for replay and demo stores and for questions that write nothing."""
    if getattr(args, "now", None) is None:
        return
    since = await store.serving_since()
    if since is not None:
        raise CallrecError(
            f"--now: the store at {store.data_dir} serves real calls (since "
            f"{short_time(since)}), so {doing} writes at the machine's time only; "
            "--now is for replay and demo stores and read-only questions"
        )


def events_of(settings: Settings) -> MqttEvents | NullEvents:
    if settings.mqtt.url is None:
        return NullEvents()
    return MqttEvents(
        settings.mqtt.url, prefix=settings.mqtt.prefix, password_file=settings.mqtt.password_file
    )


def announce_deleted(events: EventSink) -> Callable[[Sequence[str]], None]:
    """An `on_deleted` for a sweep: one event per recording it deleted."""

    def publish(recording_ids: Sequence[str]) -> None:
        for recording_id in recording_ids:
            events.publish(
                "recording/deleted", {"recording_id": recording_id, "reason": "retention"}
            )

    return publish


def publish_sweep(events: EventSink, result: SweepReport) -> None:
    """The events of a finished sweep: its deletions not announced yet, then its end."""
    if result.dry_run:
        return
    announce_deleted(events)(result.deleted)
    events.publish("sweep/finished", {"deleted": result.count, "problems": len(result.problems)})


@contextlib.asynccontextmanager
async def command_events(settings: Settings) -> AsyncIterator[EventSink]:
    """Events of a one-shot command (withdraw, sweep): published, then drained briefly."""
    events = events_of(settings)
    if isinstance(events, MqttEvents):
        await events.start()
    try:
        yield events
    finally:
        if isinstance(events, MqttEvents):
            await events.stop(drain_timeout=5.0)


async def init(settings: Settings, args: argparse.Namespace) -> int:
    async with open_store(settings, create=True) as store:
        await make_spool(settings)
        created = store.created
    if args.json:
        print_json({"data_dir": settings.data_dir, "created": created})
    elif created:
        print(f"created a new store at {settings.data_dir} (spool {settings.spool_dir})")
        print(f"back up {settings.data_dir / 'pseudonym.key'} apart from the ledger")
    else:
        print(f"a store exists at {settings.data_dir}: nothing created")
    return EXIT_OK


async def migrate(settings: Settings, args: argparse.Namespace) -> int:
    """Migrate an existing store's ledger; a new one is made by `init` (it needs its keys)."""
    before = await ledger_version(
        settings.data_dir,
        ledger_url=settings.ledger.url,
        ledger_password=settings.ledger.password,
    )
    async with open_store(settings):
        pass  # opening a store migrates its ledger
    after = SCHEMA_VERSION
    if args.json:
        print_json({"ledger": settings.ledger.backend, "from": before, "to": after})
    elif before == after:
        print(f"{settings.ledger.shown}: at schema version {after}, nothing to do")
    else:
        print(f"{settings.ledger.shown}: migrated from schema version {before} to {after}")
    return EXIT_OK


async def _run_scenarios(
    settings: Settings,
    files: list[Path],
    data_dir: Path,
    scale: float,
    as_json: bool,
    title: str,
    live: LiveAsterisk | None = None,
    *,
    per_scenario: bool = False,
) -> int:
    """Play the scenarios and report. With `per_scenario` (the demo, on the data directory's
    SQLite ledger) each scenario gets its own store in `data_dir/<scenario file stem>`: a
    scenario that sweeps a year later deletes nothing of another's."""
    from dataclasses import replace

    from callrec.harness import harness, refuse_a_serving_dir
    from callrec.runner import live_capable, run_scenario
    from callrec.scenarios import Scenario, load_scenarios

    scenarios = load_scenarios(files)
    policy = settings.policy
    if policy.overload_window is None:
        # The demo shows the overload switch: it needs a window to widen to.
        policy = replace(policy, overload_window=timedelta(hours=3))
    per_scenario = per_scenario and live is None and settings.ledger.url is None
    results: list[dict[str, object]] = []
    recordings: list[tuple[str, RecordingRow]] = []
    failed = 0
    skipped = 0
    if not as_json:
        print(title)
        print(f"store: {data_dir}" + (" (one store per scenario in it)" if per_scenario else ""))
    spool = settings.spool_dir if live is not None else None

    def open_harness(where: Path) -> contextlib.AbstractAsyncContextManager[Harness]:
        return harness(
            policy,
            where,
            time_scale=scale,
            live=live,
            spool_dir=spool,
            spool_mode=settings.spool_mode,
            ledger=settings.ledger,
        )

    async def play(h: Harness, scenario: Scenario) -> None:
        nonlocal failed, skipped
        if live is not None and not live_capable(scenario):
            skipped += 1
            results.append(
                {
                    "scenario": scenario.name,
                    "file": scenario.path.name,
                    "skipped": "a step has no live test caller",
                }
            )
            if not as_json:
                print(f"\n[SKIP] {scenario.name}: a step has no `live:` test caller")
            return
        reports = await run_scenario(h, scenario)
        bad = [c for r in reports for c in r.checks if not c.ok]
        failed += bool(bad)
        results.append(
            {
                "scenario": scenario.name,
                "file": scenario.path.name,
                "data_dir": h.data_dir,
                "passed": not bad,
                "steps": reports,
            }
        )
        if not as_json:
            mark = "PASS" if not bad else "FAIL"
            print(f"\n[{mark}] {scenario.name}")
            if per_scenario:
                print(f"  store: {h.data_dir}")
            for report in reports:
                print(f"  {report.title}")
                for line in report.lines:
                    print(f"      {line}")
                for check in report.checks:
                    if not check.ok:
                        print(
                            f"      !! {check.what}: expected {check.expected!r}, "
                            f"got {check.actual!r}"
                        )

    if per_scenario:
        # The directory itself may be a store that serves real calls: never write beside it.
        await refuse_a_serving_dir(policy, data_dir)
        for scenario in scenarios:
            async with open_harness(data_dir / scenario.path.stem) as h:
                await play(h, scenario)
                rows = await h.store.recordings(include_deleted=True)
                recordings += [(scenario.path.stem, row) for row in rows]
    else:
        async with open_harness(data_dir) as h:
            for scenario in scenarios:
                await play(h, scenario)
            rows = await h.store.recordings(include_deleted=True)
            recordings += [("", row) for row in rows]
    if as_json:
        print_json(
            {"scenarios": results, "recordings": [r for _, r in recordings], "data_dir": data_dir}
        )
    else:
        tz = policy.timezone
        print(f"\nstore contents ({len(recordings)} recordings, times in {tz}):")
        headers = ["id", "line", "basis", "status", "bytes", "created", "delete after", "linked"]
        print(
            table(
                [
                    (
                        *((store,) if per_scenario else ()),
                        short_recording_id(r.id),
                        r.line,
                        r.legal_basis.value,
                        r.status.value,
                        r.size,
                        short_time(r.created_at, tz),
                        short_time(r.delete_after, tz),
                        (r.linked_to or "")[:8],
                    )
                    for store, r in recordings
                ],
                (["store"] if per_scenario else []) + headers,
            )
        )
        passed = len(scenarios) - failed - skipped
        print(f"\n{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
        if per_scenario:
            example = data_dir / scenarios[0].path.stem if scenarios else data_dir
            print(
                f"data left in {data_dir}, one store per scenario "
                f"(CALLREC_DATA_DIR={example} callrec recordings list)"
            )
        else:
            print(f"data left in {data_dir} (CALLREC_DATA_DIR={data_dir} callrec recordings list)")
    if skipped == len(scenarios):
        return EXIT_FAILED  # nothing ran: nothing was shown to hold
    return EXIT_OK if failed == 0 else EXIT_FAILED


def _fresh_dir(settings: Settings, given: Path | None, prefix: str) -> Path:
    import os

    if given is not None:
        return given
    if os.environ.get("CALLREC_DATA_DIR"):
        return settings.data_dir
    return _new_dir(prefix)


def _new_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=".")).absolute()


async def demo(settings: Settings, args: argparse.Namespace) -> int:
    scenarios = scenarios_dir()  # the policy's cases: the checkout's, or the package's copy
    data_dir = _fresh_dir(settings, args.data_dir, "callrec-demo-")
    return await _run_scenarios(
        settings,
        [scenarios],
        data_dir,
        args.scale,
        args.json,
        "callrec demo: the policy's cases on a simulated PBX",
        per_scenario=True,
    )


async def replay(settings: Settings, args: argparse.Namespace) -> int:
    live = None
    if args.ari:
        # A live Asterisk running asterisk-conf/ (with its test contexts); its MixMonitor
        # writes to the configured spool_dir. The ledger and store are a new directory, never
        # the configured one: test calls dated by their scenarios would sit among callers'
        # recordings, and the next sweep would delete them, audited as if they were real.
        live = LiveAsterisk(args.ari, settings.ari.user, settings.ari.password, settings.ari.app)
        await refuse_a_taken_app(live)  # before a data directory is made for nothing
        data_dir = args.data_dir or _new_dir("callrec-replay-")
    else:
        data_dir = _fresh_dir(settings, args.data_dir, "callrec-replay-")
    title = "callrec replay" + (f" against {args.ari}" if args.ari else "")
    return await _run_scenarios(
        settings, list(args.files), data_dir, args.scale, args.json, title, live
    )


async def recordings(settings: Settings, args: argparse.Namespace) -> int:
    async with open_store(settings) as store:
        match args.action:
            case "list":
                rows = await store.recordings(include_deleted=args.all)
                if args.json:
                    print_json(rows)
                else:
                    print(
                        table(
                            [
                                (
                                    r.id,
                                    r.line,
                                    r.legal_basis.value,
                                    r.status.value,
                                    r.caller or "",
                                    short_time(r.created_at, settings.policy.timezone),
                                    short_time(r.delete_after, settings.policy.timezone),
                                )
                                for r in rows
                            ],
                            ["id", "line", "basis", "status", "caller", "created", "delete after"],
                        )
                    )
                return EXIT_OK
            case "show":
                return await calls_cli.show_recording(settings, args, store)
            case "access-log":
                return await calls_cli.access_log(settings, args, store)
            case "export":
                now = now_arg(args)
                await refuse_time_travel(store, args, "an export")
                try:
                    purpose = Purpose(args.purpose)
                except ValueError:
                    raise CallrecError(f"--purpose: unknown purpose {args.purpose!r}") from None
                ids = [await store.resolve_id("recording", given) for given in args.ids]
                with ProgressBar("export") as bar:
                    path = await store.export(ids, args.to, purpose, args.by, now, progress=bar)
                if args.json:
                    print_json({"export": path})
                else:
                    print(f"exported {len(args.ids)} recording(s) to {path}")
                return EXIT_OK
            case "verify":
                if args.checkpoints is not None and not args.checkpoints.is_file():
                    raise CallrecError(f"--checkpoints: no file {args.checkpoints}")
                with ProgressBar("verify") as bar:
                    result = await store.verify(progress=bar, checkpoint_file=args.checkpoints)
                if args.json:
                    print_json(
                        {
                            "checked": result.checked,
                            "ok": result.ok,
                            "problems": list(result.problems),
                            "checkpoint": result.checkpoint,
                            "in_flight": list(result.in_flight),
                        }
                    )
                else:
                    for problem in result.problems:
                        print(f"PROBLEM: {problem}")
                    for line in result.in_flight:
                        print(f"in flight: {line}")
                    if result.checkpoint is not None:
                        print(checkpoint_line(result.checkpoint))
                    print(
                        f"verified {result.checked} item(s): "
                        + ("all match" if result.ok else f"{len(result.problems)} problem(s)")
                    )
                return EXIT_OK if result.ok else EXIT_FAILED
    return EXIT_ERROR


def checkpoint_line(status: CheckpointStatus) -> str:
    if status.seq is None:
        return f"checkpoint: none in {status.path}"
    return (
        f"checkpoint: entry {status.seq} at {short_time(status.at)}, signature "
        + ("ok" if status.signature_ok else f"PROBLEMS ({status.bad} bad line(s))")
        + ", "
        + (
            f"the chain covers it ({status.entries_after} entries since)"
            if status.covered
            else "NOT covered by the chain"
        )
    )


async def audit(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "check-checkpoints":
        return check_checkpoints(args.file, args.public_key, as_json=args.json)
    async with open_store(settings) as store:
        if args.action == "public-key":
            sys.stdout.write(store.checkpoint_public_key().decode("ascii"))
            return EXIT_OK
        written = await store.checkpoint(datetime.now(UTC))
    if args.json:
        print_json(written)
    else:
        print(
            f"checkpoint: entry {written.seq}, head {written.head}, at "
            f"{short_time(parse_ts(written.at), settings.policy.timezone)}"
        )
    return EXIT_OK


def check_checkpoints(path: Path, public_key: Path, *, as_json: bool) -> int:
    """Checks a checkpoint file with the public key alone: every line signed by it, no two
    checkpoints of one entry with different hashes. Needs no ledger and no secret."""
    public = checkpoints.load_public_key(public_key)
    if not path.is_file():
        raise CallrecError(f"no checkpoint file {path}")
    found, problems = checkpoints.read(path)
    good, unsigned = checkpoints.signed(found, public)
    problems += unsigned
    newest = checkpoints.latest(good)
    if newest is None:
        problems.append(f"checkpoints: none in {path} is signed by this key")
    if as_json:
        print_json(
            {
                "file": path,
                "key": checkpoints.fingerprint(public),
                "checkpoints": len(good),
                "latest": None
                if newest is None
                else {"seq": newest.seq, "head": newest.head, "at": parse_ts(newest.at)},
                "ok": not problems,
                "problems": problems,
            }
        )
    else:
        for problem in problems:
            print(f"PROBLEM: {problem}")
        print(
            f"{len(good)} checkpoint(s) signed by key {checkpoints.fingerprint(public)}"
            + (
                ""
                if newest is None
                else f"; latest: entry {newest.seq} at {short_time(parse_ts(newest.at))}"
            )
        )
    return EXIT_OK if not problems else EXIT_FAILED


async def withdraw(
    settings: Settings, args: argparse.Namespace, caller: str | None, now: datetime
) -> int:
    received = now if args.received_at is None else time_arg(args.received_at, "--received-at")
    async with open_store(settings) as store, command_events(settings) as events:
        await refuse_time_travel(store, args, "a withdrawal")
        result = await store.withdraw(
            caller,
            WithdrawalVia(args.via),
            received,
            args.by,
            now,
            call_id=None if args.call is None else await store.resolve_id("call", args.call),
            recording_id=None
            if args.recording is None
            else await store.resolve_id("recording", args.recording),
        )
        events.publish(
            "withdrawal/received",
            {
                "withdrawal_id": result.withdrawal_id,
                "via": result.via.value,
                "due_on": result.due_on,
            },
        )
        for recording_id in result.deleted:
            events.publish(
                "recording/deleted", {"recording_id": recording_id, "reason": "withdrawal"}
            )
        if result.completed_at is not None:
            events.publish(
                "withdrawal/completed",
                {
                    "withdrawal_id": result.withdrawal_id,
                    "deleted": len(result.deleted),
                    "kept": len(result.kept),
                },
            )
    if args.json:
        print_json(result)
        return EXIT_OK
    tz = settings.policy.timezone
    print(f"withdrawal {result.withdrawal_id} registered ({result.via.value}, by {args.by})")
    print(
        f"received {short_time(result.received_at, tz)}, counts from {result.received_on}; "
        f"deletion due by {result.due_on}"
    )
    print(
        f"deleted {len(result.deleted)} consent recording(s): "
        + (", ".join(result.deleted) or "none")
    )
    for recording_id, why in result.kept:
        print(f"kept {recording_id}: {why}")
    if not result.deleted and result.kept:
        print(
            "only recordings on another legal basis were found: consent withdrawal does "
            "not apply to them"
        )
    return EXIT_OK


async def sweep(settings: Settings, args: argparse.Namespace, now: datetime) -> int:
    async with open_store(settings) as store, command_events(settings) as events:
        if not args.dry_run:
            await refuse_time_travel(store, args, "a sweep (other than --dry-run)")
        started = time.monotonic()
        with ProgressBar("sweep") as bar:
            result = await store.sweep(now, dry_run=args.dry_run, progress=bar)
        took = time.monotonic() - started
        publish_sweep(events, result)
    if args.json:
        print_json(result)
    else:
        # One line however many were deleted (a timer's sweep goes to the journal); the
        # ids at debug level, and all of them in --json.
        summary = sweep_summary(result.count, len(result.problems), took, dry_run=args.dry_run)
        print(f"sweep at {short_time(now, settings.policy.timezone)}: {summary}")
        for recording_id in result.deleted:
            log.debug("sweep: %s %s", "due" if args.dry_run else "deleted", recording_id)
        for problem in result.problems[:PROBLEMS_SHOWN]:
            print(f"  not deleted (retried next sweep): {problem}")
        if len(result.problems) > PROBLEMS_SHOWN:
            print(f"  ... and {len(result.problems) - PROBLEMS_SHOWN} more (--json lists all)")
    return EXIT_OK


async def callbacks(settings: Settings, args: argparse.Namespace, now: datetime) -> int:
    async with open_store(settings) as store:
        if args.overload is not None:
            if not args.by:
                raise CallrecError("--overload needs --by (the switch is audited)")
            await refuse_time_travel(store, args, "the overload switch")
            await store.set_overload(args.overload == "on", args.by, now)
            print(f"overload switch {args.overload} (by {args.by}, audited)", file=sys.stderr)
        due = await store.callbacks_due(now)
    if args.json:
        print_json(due)
    else:
        print(
            table(
                [
                    (
                        d.call_id,
                        d.line,
                        d.caller or "anonymous",
                        short_time(d.ended_at, settings.policy.timezone),
                        short_time(d.due_by, settings.policy.timezone),
                        "OVERDUE" if d.overdue else "",
                    )
                    for d in due
                ],
                ["call", "line", "caller", "missed at", "call back by", ""],
            )
        )
    return EXIT_OK


async def report(settings: Settings, args: argparse.Namespace) -> int:
    start = time_arg(args.start, "--from")
    end = time_arg(args.end, "--to")
    async with open_store(settings) as store:
        result = await store.report(start, end)
    if args.json:
        print_json(result)
    else:
        print(human_report(result, settings.policy.timezone))
    return EXIT_OK


def human_report(result: Report, tz: str) -> str:
    """The report as a data protection officer reads it: counts, then each withdrawal and
    callback with whether it kept its promise."""
    parts = [
        f"report {short_time(result.start, tz)} .. {short_time(result.end, tz)} ({tz})",
        "",
        "calls by line and decision:",
        table(
            [
                (c.line or "(no line)", c.direction.value, c.decision.value, c.calls)
                for c in result.calls
            ],
            ["line", "direction", "decision", "calls"],
        ),
        "",
        f"answered {result.answered}, missed {result.missed}; recordings made "
        f"{result.recordings_made}, empty {result.recordings_empty}, deleted "
        f"{result.recordings_deleted} ("
        + (", ".join(f"{why} {n}" for why, n in result.deleted_by_reason) or "none")
        + ")",
        "",
        f"withdrawals ({len(result.withdrawals)}):",
        table(
            [
                (
                    w.withdrawal_id[:8],
                    w.via.value,
                    w.received_on,
                    w.due_on,
                    short_time(w.completed_at, tz),
                    len(w.deleted),
                    len(w.kept),
                    {True: "met", False: "MISSED", None: "open"}[w.met_deadline],
                )
                for w in result.withdrawals
            ],
            ["id", "via", "received", "due", "completed", "deleted", "kept", "deadline"],
        ),
        "",
        f"callbacks ({len(result.callbacks)}):",
        table(
            [
                (
                    c.callback_call_id[:8],
                    c.missed_call_id[:8],
                    c.line,
                    short_time(c.missed_ended_at, tz),
                    short_time(c.called_back_at, tz),
                    "yes" if c.within_window else "NO",
                    "on" if c.overload else "",
                )
                for c in result.callbacks
            ],
            [
                "callback",
                "missed call",
                "line",
                "missed at",
                "called back",
                "in window",
                "overload",
            ],
        ),
    ]
    return "\n".join(parts)


def prompts(args: argparse.Namespace) -> int:
    """`prompts path`: where this install keeps the audio; `prompts install DIR`: copy it
    (with texts and manifest) into Asterisk's sounds directory, checked against the manifest."""
    from prompts.catalog import sounds_dir
    from prompts.install import install

    if args.action == "path":
        print(sounds_dir())
        return EXIT_OK
    installed = install(args.dir)
    if args.json:
        print_json(
            {
                "dir": args.dir / "sl",
                "files": [{"path": i.path, "changed": i.changed} for i in installed],
            }
        )
    else:
        changed = sum(i.changed for i in installed)
        print(
            f"{len(installed)} files in {args.dir / 'sl'}: {changed} written, "
            f"{len(installed) - changed} already up to date"
        )
    return EXIT_OK
