"""The `callrec` command line: what operators and the data protection officer touch.

Every subcommand reads the same settings (`callrec.config`), takes `--now` where it reads
time, prints a human table or `--json`, and exits non-zero on any failure or unmet
expectation. Errors are one clear line; `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

from callrec import exports
from callrec.config import Settings, load_settings
from callrec.logs import FORMATS
from callrec.logs import configure as configure_logs
from callrec.resources import version
from callrec.times import DEFAULT_ZONE, local, plain_date
from flows.errors import CallrecError
from flows.numbers import normalise

EXIT_OK = 0
EXIT_FAILED = 1  # an expectation or a check failed
EXIT_ERROR = 2  # bad input, bad config, an unavailable service

log = logging.getLogger("callrec")
# Times an operator may name. Dates a retention period or a deadline away from these must
# still be dates, and the ledger writes years with four digits.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2999, 12, 31, 23, 59, 59, tzinfo=UTC)


def _now(text: str | None, option: str = "--now") -> datetime:
    if text is None:
        return datetime.now(UTC)
    if plain_date(text):
        raise CallrecError(
            f"{option}: {text!r} is a date, and a moment is needed: give a time with its "
            f"offset, in the form --now takes, e.g. {text.strip()}T00:00:00+01:00"
        )
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CallrecError(f"{option}: {text!r} is not an ISO-8601 time") from None
    if value.tzinfo is None:
        raise CallrecError(
            f"{option}: {text!r} needs a UTC offset, e.g. {text.strip()}+01:00 (the form "
            "--now takes)"
        )
    try:
        utc: datetime | None = value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 has no UTC time
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise CallrecError(
            f"{option}: {text!r} is outside the years {EARLIEST.year}-{LATEST.year}, the "
            "times callrec can keep"
        )
    return utc


def to_json(value: Any) -> Any:
    """Rows and reports as JSON: datetimes in ISO-8601 UTC, enums by value, sets sorted."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: to_json(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, frozenset | set):
        return sorted(to_json(v) for v in value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def print_json(value: Any) -> None:
    json.dump(to_json(value), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def short_time(moment: datetime | None, tz: str = DEFAULT_ZONE) -> str:
    """A time for people, by the one rule (`callrec.times`): the policy's zone, its offset."""
    return local(moment, tz)


def log_format_option(parser: argparse.ArgumentParser, *, inner: bool = False) -> None:
    """`--log-format`, before the command or (serve, fastagi) after it; the one after wins."""
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        # After the command only when given, so that it does not undo the one before it.
        default=argparse.SUPPRESS if inner else None,
        help="log lines as text (default; no timestamp under journald) or one JSON object "
        "a line (or CALLREC_LOG_FORMAT)",
    )


def build_parser() -> argparse.ArgumentParser:
    from callrec import calls_cli

    parser = argparse.ArgumentParser(
        prog="callrec",
        description="Lawful call recording for Asterisk: notice, consent, callbacks, retention.",
    )
    parser.add_argument("--config", type=Path, help="config file (default ./callrec.toml)")
    parser.add_argument("--debug", action="store_true", help="log everything, show tracebacks")
    log_format_option(parser)
    parser.add_argument("--version", action="version", version=f"callrec {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help_text: str, *, now: bool = True, json_out: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if now:
            p.add_argument("--now", help="ISO-8601 time to act at (default: the clock)")
        if json_out:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    command(
        "init", "create a new store (ledger, key, directories) at the data directory", now=False
    )
    command(
        "migrate",
        "bring the configured ledger (SQLite or PostgreSQL) to this program's schema",
        now=False,
    )
    for name, help_text in (
        ("serve", "run the ARI (Stasis) controller"),
        ("fastagi", "run the FastAGI server"),
    ):
        log_format_option(command(name, help_text, now=False, json_out=False), inner=True)
    demo = command(
        "demo",
        "the policy's cases on a simulated PBX, the configured ledger and local files",
        now=False,
    )
    demo.add_argument("--data-dir", type=Path, help="where to leave the demo's store")
    demo.add_argument("--scale", type=float, default=0.02, help="simulated seconds -> real")
    replay = command("replay", "run scenario files and check their expectations", now=False)
    replay.add_argument("files", nargs="+", type=Path)
    replay.add_argument("--ari", help="run against a live Asterisk's ARI URL instead")
    replay.add_argument("--scale", type=float, default=0.02)
    replay.add_argument("--data-dir", type=Path)

    recordings = sub.add_parser("recordings", help="list, show, export or verify recordings")
    rsub = recordings.add_subparsers(dest="action", required=True, metavar="ACTION")
    rl = rsub.add_parser("list", help="recordings in the store")
    rl.add_argument("--json", action="store_true")
    rl.add_argument("--all", action="store_true", help="include deleted ones")
    rs = rsub.add_parser("show", help="one recording, its audit trail, accesses and exports")
    rs.add_argument("id")
    rs.add_argument("--json", action="store_true")
    rx = rsub.add_parser("export", help="copy recordings + manifest for evidence")
    rx.add_argument("ids", nargs="+")
    rx.add_argument("--to", type=Path, required=True, help="destination directory")
    rx.add_argument(
        "--purpose", required=True, help="evidence, training, quality or one of [purposes]"
    )
    rx.add_argument("--by", required=True, help="who asks (logged)")
    rx.add_argument("--now", help="ISO-8601 time to log the export at (replay stores only)")
    rx.add_argument("--json", action="store_true")
    rv = rsub.add_parser("verify", help="recompute hashes and the audit chain")
    rv.add_argument("--json", action="store_true")
    rv.add_argument(
        "--checkpoints",
        type=Path,
        help="check the chain against this copy of the checkpoint file (default: the store's)",
    )

    calls_cli.add_access_log_parser(rsub)
    calls_cli.add_calls_parser(sub)

    audit = sub.add_parser("audit", help="the audit chain's signed checkpoints")
    asub = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    asub.add_parser("public-key", help="print the key that checks the store's checkpoints (PEM)")
    ac = asub.add_parser("checkpoint", help="sign the audit chain's head now and append it")
    ac.add_argument("--json", action="store_true")
    ak = asub.add_parser(
        "check-checkpoints",
        help="check a checkpoint file with only the public key (no ledger, no secret key)",
    )
    ak.add_argument("file", type=Path, help="a copy of checkpoints/checkpoints.jsonl")
    ak.add_argument("--public-key", type=Path, required=True, help="the store's checkpoint.pub")
    ak.add_argument("--json", action="store_true")

    withdraw = command("withdraw", "register a withdrawal of consent and carry it out")
    named = withdraw.add_mutually_exclusive_group(required=True)
    named.add_argument("--caller", help="the caller's phone number: every communication")
    named.add_argument(
        "--call", metavar="ID", help="one communication, by a call of it (no caller ID)"
    )
    named.add_argument("--recording", metavar="ID", help="one communication, by its recording")
    withdraw.add_argument("--via", required=True, choices=["phone", "email"])
    withdraw.add_argument("--received-at", help="when it was received, if earlier (default: --now)")
    withdraw.add_argument("--by", required=True, help="the agent or DPO who registers it")

    sweep = command("sweep", "delete every recording past its retention")
    sweep.add_argument("--dry-run", action="store_true", help="list, delete nothing")

    callbacks = command("callbacks", "missed calls awaiting a callback")
    callbacks.add_argument(
        "--overload", choices=["on", "off"], help="set the operator's overload switch (audited)"
    )
    callbacks.add_argument("--by", help="who sets the overload switch")

    exports.add_parser(sub)

    asterisk = sub.add_parser("asterisk", help="callrec's files in an Asterisk configuration")
    xsub = asterisk.add_subparsers(dest="action", required=True, metavar="ACTION")
    xi = xsub.add_parser(
        "install",
        help="write callrec/ files generated from the configuration and include them",
        description="Write callrec's dialplan, queues and ARI user under ETC/callrec/ and "
        "add '#include callrec/...' lines to the operator's files where missing (backing "
        "each changed file up first). Never writes modules.conf.",
    )
    xi.add_argument("--etc", type=Path, default=Path("/etc/asterisk"), help="default /etc/asterisk")
    xi.add_argument("--dry-run", action="store_true", help="print a unified diff, change nothing")
    xi.add_argument(
        "--test-parties", action="store_true", help="also the test endpoints and test contexts"
    )
    xi.add_argument("--mode", choices=["ari", "agi"], default="ari", help="CALLREC_MODE")
    xi.add_argument("--reload", action="store_true", help="reload through `asterisk -rx`")
    xi.add_argument("--asterisk", default="asterisk", help="the asterisk binary for --reload")
    prompts = sub.add_parser("prompts", help="the prompts' audio, for Asterisk's sounds directory")
    psub = prompts.add_subparsers(dest="action", required=True, metavar="ACTION")
    psub.add_parser("path", help="print the directory holding sl/<id>.<format> in this install")
    pi = psub.add_parser(
        "install", help="copy the audio, texts and manifest into DIR/sl/ (DIR: Asterisk's sounds)"
    )
    pi.add_argument("dir", type=Path, metavar="DIR", help="e.g. /usr/share/asterisk/sounds")
    pi.add_argument("--json", action="store_true")

    report = command("report", "calls, decisions, recordings, withdrawals and callbacks")
    report.add_argument("--from", dest="start", required=True, help="ISO-8601 start")
    report.add_argument("--to", dest="end", required=True, help="ISO-8601 end")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log_format = args.log_format or os.environ.get("CALLREC_LOG_FORMAT") or "text"
    if log_format not in FORMATS:
        print(
            f"callrec: CALLREC_LOG_FORMAT: must be one of {', '.join(FORMATS)}, got {log_format!r}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    # A controller's journal says what it does (connected, swept); commands say only
    # what went wrong.
    quiet = logging.INFO if args.command in ("serve", "fastagi") else logging.WARNING
    configure_logs(log_format, logging.DEBUG if args.debug else quiet)
    try:
        if args.command == "export":  # an auditor's offline check: no config, no ledger
            return exports.verify(args)
        settings = load_settings(args.config)
        return asyncio.run(dispatch(args, settings))
    except CallrecError as error:
        if args.debug:
            raise
        print(f"callrec: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


async def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from callrec import commands, controller

    match args.command:
        case "init":
            return await commands.init(settings, args)
        case "migrate":
            return await commands.migrate(settings, args)
        case "serve":
            return await controller.serve(settings, lambda: load_settings(args.config))
        case "fastagi":
            return await controller.fastagi(settings, lambda: load_settings(args.config))
        case "demo":
            return await commands.demo(settings, args)
        case "replay":
            return await commands.replay(settings, args)
        case "recordings":
            return await commands.recordings(settings, args)
        case "audit":
            return await commands.audit(settings, args)
        case "withdraw":
            caller = (
                None
                if args.caller is None
                else normalise(args.caller, country_code=settings.policy.country_code)
            )
            return await commands.withdraw(settings, args, caller, _now(args.now))
        case "sweep":
            return await commands.sweep(settings, args, _now(args.now))
        case "callbacks":
            return await commands.callbacks(settings, args, _now(args.now))
        case "report":
            return await commands.report(settings, args)
        case "asterisk":
            from callrec import asterisk_install

            return asterisk_install.command(settings, args, os.environ)
        case "calls":
            from callrec import calls_cli

            async with commands.open_store(settings) as store:
                return await calls_cli.calls(settings, args, store)
        case "prompts":
            return commands.prompts(args)
    raise CallrecError(f"unknown command {args.command}")


def now_arg(args: argparse.Namespace) -> datetime:
    return _now(getattr(args, "now", None))


def time_arg(text: str, option: str) -> datetime:
    """An ISO-8601 time given as `option` (--received-at, --from, --to)."""
    return _now(text, option)


if __name__ == "__main__":
    sys.exit(main())
