"""Test doubles that are the real interfaces: a scripted Asterisk FastAGI peer speaking
over real TCP, an event sink that keeps what it was given, a settable clock, and a FastAGI
server on loopback over a real SQLite store (`storage.sqlite.SqliteStore`).

A transcript (`tests/agi_transcripts/*.agi`) is what one AGI connection says, line by line:

    # comment                  ignored, as are empty lines of the file
    > agi_network: yes         the peer (Asterisk) sends this line; `>` alone sends ""
    < ANSWER                   the server must send exactly this line
    < EOF                      the server must close the connection now
    ! decision record          call the test's hook `decision`, if it gave one, with "record"

`{name}` in a line is replaced by the binding `name`; in an expected line an unbound
`{..._id}` matches 32 lowercase hex digits and binds it for the lines after.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agi.collector import RecordingCollector
from agi.fastagi import FastAgiServer
from agi.ports import Payload
from agi.session import SessionDeps
from agi.simpbx import SimulatedPbx
from agi.spool import SpoolWatch
from flows.policy import Policy
from prompts.catalog import load_catalog
from storage.ports import Ledger
from storage.sqlite import SqliteStore

TRANSCRIPTS = Path(__file__).parent / "agi_transcripts"

Hook = Callable[..., Awaitable[None]]


# -- the scripted Asterisk peer ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    kind: str  # "send", "expect", "eof", "hook"
    text: str
    args: tuple[str, ...] = ()
    line: int = 0


def load_transcript(name: str) -> list[Step]:
    path = TRANSCRIPTS / name
    steps: list[Step] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip() or raw.startswith("#"):
            continue
        marker, text = raw[0], raw[2:] if len(raw) > 1 else ""
        if marker == ">":
            steps.append(Step("send", text, line=number))
        elif marker == "<":
            steps.append(Step("eof" if text == "EOF" else "expect", text, line=number))
        elif marker == "!":
            hook, *args = text.split()
            steps.append(Step("hook", hook, tuple(args), line=number))
        else:
            raise ValueError(f"{name}:{number}: a line starts with >, <, ! or #")
    return steps


def _pattern(expected: str, bindings: Mapping[str, str], seen: set[str]) -> re.Pattern[str]:
    parts: list[str] = []
    for index, piece in enumerate(re.split(r"\{(\w+)\}", expected)):
        if index % 2 == 0:
            parts.append(re.escape(piece))
        elif piece in bindings:
            parts.append(re.escape(bindings[piece]))
        elif piece in seen:
            parts.append(f"(?P={piece})")
        elif piece.endswith("_id"):
            seen.add(piece)
            parts.append(f"(?P<{piece}>[0-9a-f]{{32}})")
        else:
            raise KeyError(f"no binding for {{{piece}}}")
    return re.compile("".join(parts))


class AgiPeer:
    """Asterisk's side of one FastAGI connection, played from a transcript."""

    def __init__(self, port: int, *, step_timeout: float = 5.0) -> None:
        self.port = port
        self.step_timeout = step_timeout
        self.received: list[str] = []  # every line the server sent

    async def play(
        self,
        name: str,
        bindings: Mapping[str, str] | None = None,
        hooks: Mapping[str, Hook] | None = None,
    ) -> dict[str, str]:
        """Play transcript `name`; returns the bindings (with the call ids it saw)."""
        bound = dict(bindings or {})
        hooks = hooks or {}
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            for step in load_transcript(name):
                where = f"{name}:{step.line}"
                if step.kind == "send":
                    text = step.text.format_map(bound) if "{" in step.text else step.text
                    writer.write(text.encode() + b"\n")
                    await writer.drain()
                elif step.kind == "hook":
                    hook = hooks.get(step.text)
                    if hook is not None:  # a check the test chose to make here
                        await hook(bound, *step.args)
                elif step.kind == "eof":
                    try:
                        rest = await asyncio.wait_for(reader.read(), self.step_timeout)
                    except ConnectionResetError:
                        rest = b""  # closed with our last line unread: a reset, not a FIN
                    assert rest == b"", f"{where}: expected the server to close, got {rest!r}"
                else:
                    raw = await asyncio.wait_for(reader.readline(), self.step_timeout)
                    assert raw.endswith(b"\n"), f"{where}: connection closed, {step.text!r} due"
                    got = raw.decode().removesuffix("\n")
                    self.received.append(got)
                    match = _pattern(step.text, bound, set()).fullmatch(got)
                    assert match is not None, f"{where}: expected {step.text!r}, got {got!r}"
                    bound.update(match.groupdict())
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        return bound


# -- events and time ---------------------------------------------------------------------


@dataclass
class ListSink:
    """`agi.ports.EventSink` that keeps what was published."""

    published: list[tuple[str, dict[str, object]]] = field(default_factory=list)

    def publish(self, kind: str, payload: Payload) -> None:
        self.published.append((kind, dict(payload)))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.published]


@dataclass
class SetClock:
    """`agi.ports.Clock` at a chosen instant, moved by the test."""

    at: datetime = field(default_factory=lambda: datetime(2025, 3, 4, 10, 0, tzinfo=UTC))

    def now(self) -> datetime:
        return self.at

    def advance(self, delta: timedelta) -> None:
        self.at += delta


# -- a running FastAGI server on loopback ------------------------------------------------


@dataclass
class Harness:
    server: FastAgiServer
    port: int
    store: SqliteStore
    deps: SessionDeps
    sink: ListSink
    clock: SetClock
    spool: Path

    def peer(self) -> AgiPeer:
        return AgiPeer(self.port)

    async def calls_in_ledger(self) -> int:
        """How many calls the ledger holds, whatever their state."""
        report = await self.store.report(
            datetime(2000, 1, 1, tzinfo=UTC), self.clock.at.replace(year=2100)
        )
        return sum(count.calls for count in report.calls)


@contextlib.asynccontextmanager
async def fastagi_harness(
    tmp_path: Path,
    policy: Policy | None = None,
    *,
    allow: tuple[str, ...] = ("127.0.0.1", "::1"),
    command_timeout: float = 2.0,
    header_timeout: float = 1.0,
    prompt_timeout: float = 5.0,
    max_line: int = 8192,
    caller_id_form: str = "national",
    ledger: Callable[[SqliteStore], Ledger] | None = None,
) -> AsyncIterator[Harness]:
    """A FastAGI server on a free loopback port, with a SQLite store in `tmp_path`; the
    sessions reach the store through `ledger(store)` when given (a slow or failing one)."""
    policy = policy or Policy()
    spool = tmp_path / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    store = await SqliteStore.open(tmp_path / "data", policy, spool_dir=spool, create=True)
    sink, clock = ListSink(), SetClock()
    collector = RecordingCollector(store, store, clock, sink, SpoolWatch(spool))
    collector.start(check=False)
    deps = SessionDeps(
        ledger=store if ledger is None else ledger(store),
        store=store,
        clock=clock,
        events=sink,
        spool_dir=spool,
        prompt_versions={"callrec-sales-notice": "ab" * 32},
        collector=collector,
        caller_id_form=caller_id_form,
    )
    server = FastAgiServer(
        deps,
        policy,
        port=0,
        allow=allow,
        command_timeout=command_timeout,
        header_timeout=header_timeout,
        prompt_timeout=prompt_timeout,
        max_line=max_line,
    )
    port = await server.start()
    try:
        yield Harness(server, port, store, deps, sink, clock, spool)
    finally:
        await server.stop(grace=1.0)
        await collector.stop()
        await store.close()


# -- a FastAGI call whose caller presses keys --------------------------------------------


@dataclass
class KeyedCall:
    """What became of one `KeyingAsterisk` call."""

    call_id: str | None = None
    prompts: list[str] = field(default_factory=list)  # STREAM FILE prompts, in order
    mixmonitor: bool = False


class KeyingAsterisk:
    """Asterisk's side of one inbound FastAGI call, answering each command as `res_agi.c`
    does rather than from a transcript, for a caller who presses `keys` ((seconds, key),
    timed from the start of the first prompt, as `agi.simpbx.CallerScript` times them).

    `STREAM FILE` plays for the prompt's duration and stops at the first key of its escape
    digits (other keys are lost, as in `ast_waitstream`); `WAIT FOR DIGIT` returns the first
    key of any kind, or 0 when its time runs out. Time is virtual: a prompt takes none of
    the test's time, and a key never falls between two commands.
    """

    def __init__(
        self,
        port: int,
        durations: Mapping[str, float],
        keys: tuple[tuple[float, str], ...],
        *,
        dialed: str,
        caller: str,
        step_timeout: float = 5.0,
    ) -> None:
        self.port = port
        self.durations = durations
        self.keys = sorted(keys)
        self.dialed = dialed
        self.caller = caller
        self.step_timeout = step_timeout
        self._now: float | None = None  # None until the first prompt starts

    async def call(self) -> KeyedCall:
        result = KeyedCall()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        environment = [
            "agi_network: yes",
            "agi_network_script: inbound",
            "agi_request: agi://127.0.0.1:4573/inbound",
            "agi_channel: PJSIP/a1-trunk-00000099",
            "agi_uniqueid: 1741082400.99",
            f"agi_callerid: {self.caller}",
            f"agi_extension: {self.dialed}",
            f"agi_arg_1: {self.dialed}",
            "",
        ]
        try:
            writer.write("".join(f"{line}\n" for line in environment).encode())
            await writer.drain()
            while True:
                raw = await asyncio.wait_for(reader.readline(), self.step_timeout)
                if not raw:
                    return result  # the server closed: the dialplan goes on
                reply = self._answer(shlex.split(raw.decode()), result)
                writer.write(f"200 result={reply}\n".encode())
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self, words: list[str], result: KeyedCall) -> str:
        match words:
            case ["VERBOSE", message, _] if message.startswith("callrec call "):
                result.call_id = message.removeprefix("callrec call ")
                return "1"
            case ["STREAM", "FILE", prompt, escape]:
                result.prompts.append(prompt)
                start = 0.0 if self._now is None else self._now
                end = start + self.durations[prompt]
                key = self._next_key(end, accept=escape)
                if key is None:
                    return f"0 endpos={round(self.durations[prompt] * 8000)}"
                played = (self._now or 0.0) - start
                return f"{ord(key)} endpos={round(played * 8000)}"
            case ["WAIT", "FOR", "DIGIT", ms]:
                key = self._next_key((self._now or 0.0) + int(ms) / 1000, accept=None)
                return "0" if key is None else str(ord(key))
            case ["EXEC", "MixMonitor", _]:
                result.mixmonitor = True
                return "0"
            case ["EXEC", *_] | ["ANSWER"]:
                return "0"
            case ["VERBOSE", *_] | ["SET", "VARIABLE", *_]:
                return "1"
        raise AssertionError(f"KeyingAsterisk has no answer to {words}")

    def _next_key(self, until: float, *, accept: str | None) -> str | None:
        """The first key pressed before `until` that ends the command (any key when
        `accept` is None); the clock moves to it, or to `until` when none does."""
        now = 0.0 if self._now is None else self._now
        while self.keys and self.keys[0][0] < until:
            at, key = self.keys.pop(0)
            now = max(now, at)
            if accept is None or key in accept:
                self._now = now
                return key
        self._now = until
        return None


def fastagi_pbx(port: int, *, time_scale: float) -> SimulatedPbx:
    """A simulated PBX whose dialplan runs FastAGI against `port` on loopback, each prompt
    as long as the catalog says (not started)."""
    return SimulatedPbx(
        mode="agi",
        fastagi=("127.0.0.1", port),
        prompt_durations={pid: info.duration_seconds for pid, info in load_catalog().items()},
        time_scale=time_scale,
    )
