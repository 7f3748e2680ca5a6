"""The FastAGI server: `AGI(agi://controller:4573/inbound,${EXTEN})` runs the same flows.

Theory of operation. Asterisk opens one TCP connection per `AGI()` call, sends the
environment block (`agi.agi_protocol`), then waits for our commands one at a time. Each
connection is one task: the route in the script path picks how the call is opened
(`agi.calls`), and `agi.session.CallSession` drives the flow through `AgiChannel`, which
turns each command into AGI lines and each reply into flow events. Because `STREAM FILE`
and `WAIT FOR DIGIT` block in Asterisk until a key, the prompt's end or the timeout, every
command answers at once with the events it produced; `session.begin` therefore returns
only when the call is decided and handed on (the connection closed: the dialplan goes on)
or gone.

Routes (`agi_network_script`):
* `inbound,<dialed exten>`: a customer calls a line.
* `callback,<customer number>,<line name or empty>[,<agent>]`: an agent calls back.
* `callee,<callback call id>`: the customer's leg of a callback that must hear the notice.
* `hangup,<call id>,${ANSWEREDTIME},${ABANDONED},${CALLREC_AGENT}`: from the dialplan's
  hangup handler; stores answered/missed and ingests the finished MixMonitor file.

FastAGI has no authentication: the server binds to loopback unless configured otherwise,
and closes every connection from an address not on its allow-list. A peer is never
trusted to behave: every read has a deadline, lines are bounded, and whatever goes wrong on
one connection (garbage, a 1 MB line, silence, a connect-and-close probe) is logged and
ends that connection only.

Asterisk quirks this relies on (`res/res_agi.c`):
* `STREAM FILE` answers `result=-1` both when the caller hangs up and when the sound file
  is missing; both end the call unrecorded, so both are `ChannelGone`.
* `HANGUP` may arrive before or after the reply it interrupts, and a dead channel still
  answers (`511` or `200`): after `HANGUP` the pending reply is read, then the channel is
  reported gone, so replies never drift out of step with commands.
* `EXEC` answers with the application's return value: `-2` for an unknown application,
  `-1` for an application that failed (MixMonitor with a bad file), which is not a hang-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from agi.agi_protocol import (
    MAX_ENVIRONMENT_LINES,
    AgiFailure,
    AgiHangup,
    AgiRequest,
    AgiResult,
    ends_usage_block,
    format_command,
    parse_agi_environment,
    parse_agi_reply,
    starts_usage_block,
)
from agi.calls import CALL_ID, Rejected, callback_session, callee_session, inbound_session
from agi.session import CallSession, SessionDeps, finish_call, has_audio
from flows.errors import (
    AsteriskError,
    CallrecError,
    ChannelGone,
    ConfigError,
    ConnectionLost,
    ProtocolViolation,
)
from flows.events import DigitPressed, DigitTimedOut, Event, PromptFinished
from flows.keys import HEARD_KEYS, heard
from flows.numbers import shown
from flows.outcome import (
    Outcome,
    agent_name,
    hangup_report,
)
from flows.policy import Policy

log = logging.getLogger("callrec.fastagi")

DEFAULT_PORT = 4573  # res_agi.c's AGI_PORT: what `agi://host/...` connects to
LOOPBACK = ("127.0.0.1", "::1")
COMMAND_TIMEOUT = 10.0  # seconds for a reply to an instant command (ANSWER, SET VARIABLE)
HEADER_TIMEOUT = 5.0  # Asterisk sends the whole environment at once on connect
PROMPT_TIMEOUT = 180.0  # STREAM FILE answers when the prompt ends: longer than any notice
MAX_LINE = 8192  # bytes; an environment line or a reply is far shorter
MAX_USAGE_LINES = 200  # a 520- usage block is a page of help text
MAX_CONNECTIONS = 1000  # each live call holds one; past this a flood is refused
SHUTDOWN_GRACE = 5.0  # seconds live calls get to end before their connections are closed
PROMPT_LANGUAGE = "sl"  # the prompts are Slovenian; Asterisk looks in sounds/sl/
RECENT_CALLS = 10_000  # channel -> call id pairs kept for look-ups after a call ends
MIXMONITOR_OPTIONS = "b"  # record only while bridged: the queue's music is nobody's data
_PROMPT_ID = re.compile(r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*")
# A MixMonitor argument is split at commas and `${...}` may be expanded (AGIEXECFULL):
# our paths are the spool directory and our call id, and nothing else gets through.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9_./+-]+")


class AgiConnection:
    """One FastAGI connection: bounded line reads, one command and its reply at a time."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        peer: str,
        command_timeout: float,
        max_line: int,
    ) -> None:
        self._reader = reader
        self._max_line = max_line
        self._writer = writer
        self.peer = peer
        self.command_timeout = command_timeout
        self.call_id: str | None = None  # set once a session owns the connection
        self.hung_up = False  # Asterisk sent HANGUP, or closed the connection
        self.broken: str | None = None  # why replies can no longer be matched to commands
        self.closed = False

    async def read_line(self) -> str | None:
        """One line without its line break; None when the peer closed cleanly."""
        try:
            raw = await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as error:
            if error.partial:
                raise ProtocolViolation(
                    f"{self.peer} closed the connection in the middle of a line",
                    call_id=self.call_id,
                ) from None
            return None
        except asyncio.LimitOverrunError:
            raise ProtocolViolation(
                f"{self.peer} sent a line longer than {self._max_line} bytes",
                call_id=self.call_id,
            ) from None
        return raw.decode("utf-8", errors="replace").removesuffix("\n").removesuffix("\r")

    async def read_environment(self) -> AgiRequest:
        lines: list[str] = []
        while True:
            line = await self.read_line()
            if line is None:
                if not lines:
                    raise ProtocolViolation(f"{self.peer} closed before sending an environment")
                raise ProtocolViolation(f"{self.peer} closed in the middle of its environment")
            if line == "":
                return parse_agi_environment(lines)
            lines.append(line)
            if len(lines) > MAX_ENVIRONMENT_LINES:
                raise ProtocolViolation(f"{self.peer} sent an environment with no end")

    async def command(self, *words: str, reply_within: float | None = None) -> AgiResult:
        """Send one command and return its `200` reply.

        `ChannelGone` when the channel hung up (result codes are the caller's business);
        `AsteriskError` for 510/511/520, no reply in time, a dropped connection or garbage.
        After a timeout or garbage the connection is unusable: a late reply would be taken
        for the answer to the next command.
        """
        line = format_command(*words)
        if self.broken is not None:
            raise ConnectionLost(
                f"{words[0]}: the AGI connection is unusable ({self.broken})", call_id=self.call_id
            )
        if self.closed or self.hung_up:
            # Nothing done on a dead channel changes the call; saying so at once keeps a
            # hung-up call from sending the rest of its batch to Asterisk.
            raise ChannelGone(f"{words[0]}: the channel is gone", call_id=self.call_id)
        limit = self.command_timeout if reply_within is None else reply_within
        try:
            async with asyncio.timeout(limit):
                self._writer.write(line.encode() + b"\n")
                await self._writer.drain()
                reply = await self._reply()
        except TimeoutError:
            self.broken = f"no reply to {words[0]} within {limit:g} s"
            raise AsteriskError(self.broken, call_id=self.call_id) from None
        except ProtocolViolation as error:
            self.broken = str(error)
            error.call_id = error.call_id or self.call_id
            raise
        except OSError as error:
            self.hung_up = True
            raise ChannelGone(
                f"{words[0]}: connection lost: {error}", call_id=self.call_id
            ) from None
        if isinstance(reply, AgiFailure):
            if self.hung_up:
                raise ChannelGone(f"{words[0]}: the channel hung up", call_id=self.call_id)
            raise AsteriskError(
                f"{line!r} answered {reply.code} {reply.message}",
                call_id=self.call_id,
                status=reply.code,
            )
        if self.hung_up:
            raise ChannelGone(f"{words[0]}: the channel hung up", call_id=self.call_id)
        return reply

    async def _reply(self) -> AgiResult | AgiFailure:
        while True:
            first = await self.read_line()
            if first is None:
                if self.broken is not None:  # we aborted it (shutdown)
                    raise ConnectionLost(self.broken, call_id=self.call_id)
                self.hung_up = True
                raise ChannelGone("Asterisk closed the AGI connection", call_id=self.call_id)
            lines = [first]
            if starts_usage_block(first):
                while not ends_usage_block(lines[-1]):
                    more = await self.read_line()
                    if more is None:
                        raise ProtocolViolation("connection closed inside a 520- usage block")
                    lines.append(more)
                    if len(lines) > MAX_USAGE_LINES:
                        raise ProtocolViolation("a 520- usage block with no end")
            reply = parse_agi_reply("\n".join(lines))
            if isinstance(reply, AgiHangup):
                self.hung_up = True  # the reply to our command still follows
                continue
            return reply

    def abort(self, reason: str) -> None:
        """Cut the connection now: a command waiting for its reply fails with `reason`."""
        self.broken = reason
        self._writer.transport.abort()

    async def close(self) -> None:
        """End the AGI script: Asterisk goes on in the dialplan."""
        if self.closed:
            return
        self.closed = True
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(self.command_timeout):
                await self._writer.wait_closed()


class AgiChannel:
    """`agi.ports.ChannelPort` over one FastAGI connection."""

    def __init__(self, connection: AgiConnection, *, prompt_timeout: float) -> None:
        self._agi = connection
        self._prompt_timeout = prompt_timeout
        self._language_set = False
        self.call_id_set = False  # CALLREC_CALL_ID is on the channel: the hangup handler has it

    async def answer(self) -> list[Event]:
        if (await self._agi.command("ANSWER")).number() < 0:
            raise ChannelGone("ANSWER failed: the channel hung up", call_id=self._agi.call_id)
        return []

    async def play(self, prompt: str, *, barge_in: bool, token: int) -> list[Event]:
        if not _PROMPT_ID.fullmatch(prompt):
            raise AsteriskError(f"not a prompt id: {shown(prompt)}", call_id=self._agi.call_id)
        if not self._language_set:
            await self._exec("Set", f"CHANNEL(language)={PROMPT_LANGUAGE}")
            self._language_set = True
        escape = HEARD_KEYS if barge_in else ""  # an ignored key does not stop the question
        result = await self._agi.command(
            "STREAM", "FILE", prompt, escape, reply_within=self._prompt_timeout
        )
        code = result.number()
        if code == 0:
            return [PromptFinished(token)]
        if code < 0:
            raise ChannelGone(
                f"STREAM FILE {prompt}: the channel hung up (or the sound is missing)",
                call_id=self._agi.call_id,
            )
        return [DigitPressed(self._digit(code, allowed=escape))]

    async def stop_prompt(self, token: int) -> list[Event]:
        return []  # STREAM FILE has already returned: the key stopped the playback

    async def wait_for_digit(self, limit: timedelta, token: int) -> list[Event]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit.total_seconds()
        ms = round(limit.total_seconds() * 1000)
        while ms > 0:
            remaining = ms / 1000
            result = await self._agi.command(
                "WAIT", "FOR", "DIGIT", str(ms), reply_within=remaining + self._agi.command_timeout
            )
            code = result.number()
            if code == 0:
                break
            if code < 0:
                raise ChannelGone("WAIT FOR DIGIT: the channel hung up", call_id=self._agi.call_id)
            if 0 < code < 0x110000 and heard(chr(code)):
                return [DigitPressed(chr(code))]
            # flows.keys: a key that means nothing (A-D) lets the wait run on to its end.
            log.info("call %s: ignored DTMF result=%d", self._agi.call_id, code)
            ms = round((deadline - loop.time()) * 1000)
        return [DigitTimedOut(token)]

    async def cancel_wait(self, token: int) -> list[Event]:
        return []  # WAIT FOR DIGIT has already returned

    async def start_recording(self, call_id: str, file: str) -> list[Event]:
        if not _SAFE_PATH.fullmatch(file) or "/../" in f"{file}/":
            raise AsteriskError(
                f"recording path {shown(file, 80)} is not a plain absolute path", call_id=call_id
            )
        await self._set("CALLREC_RECORD", "yes")
        await self._set("CALLREC_FILE", file)
        await self._set("CALLREC_CALL_ID", call_id)
        self.call_id_set = True
        await self._exec("MixMonitor", f"{file},{MIXMONITOR_OPTIONS}")
        return []

    async def skip_recording(self, call_id: str) -> list[Event]:
        await self._set("CALLREC_RECORD", "no")
        await self._set("CALLREC_CALL_ID", call_id)
        self.call_id_set = True
        return []

    async def go_on_unrecorded(self) -> None:
        """No session for this call: the dialplan must not record it."""
        await self._set("CALLREC_RECORD", "no")

    async def notice_callee(self, call_id: str, line: str) -> list[Event]:
        await self._set("CALLREC_NOTICE", "yes")
        return []

    async def show_caller_id(self, number: str) -> None:
        await self._set("CALLREC_CALLBACK_CID", number)

    async def continue_in_dialplan(self) -> list[Event]:
        await self._agi.close()
        return []

    async def hangup(self) -> list[Event]:
        await self._agi.command("HANGUP")
        return []

    async def verbose(self, message: str, level: int = 3) -> None:
        """A line in Asterisk's console log, tying the channel to our call id."""
        await self._agi.command("VERBOSE", message, str(level))

    async def _set(self, name: str, value: str) -> None:
        await self._agi.command("SET", "VARIABLE", name, value)

    async def _exec(self, application: str, data: str) -> None:
        code = (await self._agi.command("EXEC", application, data)).number()
        if code != 0:
            raise AsteriskError(
                f"EXEC {application} returned {code}", call_id=self._agi.call_id, status=code
            )

    def _digit(self, code: int, *, allowed: str) -> str:
        digit = chr(code) if 0 < code < 0x110000 else ""
        if not digit or digit not in allowed:
            raise ProtocolViolation(
                f"STREAM FILE returned result={code}, not one of the escape digits",
                call_id=self._agi.call_id,
            )
        return digit


@dataclass(slots=True)
class ServerStats:
    """Counters for status lines and tests."""

    connections: int = 0  # accepted from an allowed peer
    refused: int = 0  # closed at once: not on the allow-list, or too many connections
    sessions: int = 0  # calls that got a session
    rejected: int = 0  # calls sent on unrecorded without a session (unknown number, ...)
    hangups: int = 0  # hangup-handler reports processed
    failed: int = 0  # connections ended by a protocol error, a timeout or a bug


class FastAgiServer:
    def __init__(
        self,
        deps: SessionDeps,
        policy: Policy,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        allow: Sequence[str] = LOOPBACK,
        command_timeout: float = COMMAND_TIMEOUT,
        header_timeout: float = HEADER_TIMEOUT,
        max_line: int = MAX_LINE,
        prompt_timeout: float = PROMPT_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._deps = deps
        self._policy = policy
        self._host = host
        self._port = port
        self._allow = frozenset(_address(a, "fastagi.allow") for a in allow)
        self._command_timeout = command_timeout
        self._header_timeout = header_timeout
        self._max_line = max_line
        self._prompt_timeout = prompt_timeout
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._live: dict[asyncio.Task[None], AgiConnection] = {}
        self._recent: dict[str, str] = {}  # channel id -> call id, the last RECENT_CALLS
        self.stats = ServerStats()
        self.idle = asyncio.Event()
        self.idle.set()

    def use_policy(self, policy: Policy) -> None:
        """Serve calls that arrive from now on under `policy` (a reloaded configuration).
        A call in progress keeps the policy it started with: its flow holds its line."""
        self._policy = policy

    @property
    def live_connections(self) -> int:
        return len(self._live)

    def call_id_of(self, channel_id: str) -> str | None:
        """Our call id for a recent Asterisk channel (for replay and status)."""
        return self._recent.get(channel_id)

    def recent_call_ids(self) -> list[str]:
        """Our call ids of the recent channels, oldest first (for replay and status)."""
        return list(self._recent.values())

    async def start(self) -> int:
        """Listen; returns the port (useful with port=0)."""
        if self._server is not None:
            raise ConfigError("fastagi: the server is already started")
        try:
            self._server = await asyncio.start_server(
                self._accept, self._host, self._port, limit=self._max_line
            )
        except OSError as error:
            raise ConfigError(
                f"fastagi: cannot listen on {self._host}:{self._port}: {error}"
            ) from None
        port: int = self._server.sockets[0].getsockname()[1]
        log.info("FastAGI listening on %s:%d", self._host, port)
        if not _is_loopback(self._host):
            log.warning(
                "FastAGI listens beyond loopback on %s: it has no authentication, only the "
                "allow-list (%s) keeps others out",
                self._host,
                ", ".join(sorted(str(a) for a in self._allow)),
            )
        return port

    async def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop accepting; live calls get `grace` seconds to end, then their connections
        are cut: a call without a decision fails closed (no decision is committed, the
        dialplan goes on unrecorded), a call already recording keeps its decision."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        if not await self._idle_within(grace):
            for connection in list(self._live.values()):
                connection.abort("the controller is shutting down")
            # The sessions now fail closed through the ledger; cancelling is the last
            # resort for one stuck there.
            if not await self._idle_within(self._command_timeout):
                for task in list(self._live):
                    task.cancel()
                await asyncio.gather(*self._live, return_exceptions=True)
        await server.wait_closed()

    async def _idle_within(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self.idle.wait()
        except TimeoutError:
            return False
        return True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        peer = _peer(writer)
        if not self._allowed(writer):
            self.stats.refused += 1
            log.warning("FastAGI connection from %s refused: not on the allow-list", peer)
            writer.close()
            return
        if task is None or len(self._live) >= self._max_connections:
            self.stats.refused += 1
            log.warning("FastAGI connection from %s refused: %d live", peer, len(self._live))
            writer.close()
            return
        self.stats.connections += 1
        connection = AgiConnection(
            reader,
            writer,
            peer=peer,
            command_timeout=self._command_timeout,
            max_line=self._max_line,
        )
        self._live[task] = connection
        self.idle.clear()
        try:
            await self._serve(connection)
        except CallrecError as error:
            self.stats.failed += 1
            log.warning("FastAGI connection from %s ended: %s", peer, error)
        except Exception:  # one broken call must never stop the server serving the others
            self.stats.failed += 1
            log.exception("FastAGI connection from %s failed", peer)
        finally:
            await connection.close()
            self._live.pop(task, None)
            if not self._live:
                self.idle.set()

    async def _serve(self, connection: AgiConnection) -> None:
        try:
            async with asyncio.timeout(self._header_timeout):
                request = await connection.read_environment()
        except TimeoutError:
            raise ProtocolViolation(
                f"{connection.peer} sent no complete AGI environment within "
                f"{self._header_timeout:g} s"
            ) from None
        channel = AgiChannel(connection, prompt_timeout=self._prompt_timeout)
        if request.route == "hangup":
            await self._hung_up(request)
            return
        try:
            opened = await self._open(request, channel)
        except CallrecError as error:
            opened = Rejected(f"the call could not be opened: {error}")
        if isinstance(opened, Rejected):
            self.stats.rejected += 1
            log.warning(
                "channel %s (%s) goes on unrecorded: %s",
                shown(request.channel_id),
                request.route,
                opened.reason,
            )
            await self._release(channel)
            return
        session, first = opened
        connection.call_id = session.call_id
        self.stats.sessions += 1
        self._recent[request.channel_id] = session.call_id
        while len(self._recent) > RECENT_CALLS:
            del self._recent[next(iter(self._recent))]
        with contextlib.suppress(AsteriskError):
            await channel.verbose(f"callrec call {session.call_id}")
        await self._run(session, first, channel)

    async def _open(
        self, request: AgiRequest, channel: AgiChannel
    ) -> tuple[CallSession, Event] | Rejected:
        deps, policy, channel_id = self._deps, self._policy, request.channel_id
        match request.route:
            case "inbound":
                return await inbound_session(
                    deps,
                    policy,
                    channel,
                    channel_id=channel_id,
                    dialed=request.arg(0),
                    caller=request.callerid,
                )
            case "callback":
                return await callback_session(
                    deps,
                    policy,
                    channel,
                    channel_id=channel_id,
                    customer=request.arg(0),
                    line_name=request.arg(1) or None,
                    agent=request.arg(2) or None,
                )
            case "callee":
                return await callee_session(
                    deps, policy, channel, channel_id=channel_id, parent_call_id=request.arg(0)
                )
        return Rejected(f"unknown FastAGI route {shown(request.route)}")

    async def _run(self, session: CallSession, first: Event, channel: AgiChannel) -> None:
        await session.begin(first)
        if session.continued and channel.call_id_set:
            return  # the hangup handler reports the outcome (`/hangup`)
        # No hangup report will name this call (its id is not on the channel), so its
        # outcome is stored here, before the connection closes and the dialplan's hangup
        # handler runs. A call that went on without its id is stored as abandoned too: the
        # conservative reading, under which a callback to it hears the notice again.
        if session.continued:
            log.warning("call %s went on without its id on the channel", session.call_id)
        else:
            await session.hung_up()
        if await session.in_ledger():
            # Not waited for: a file MixMonitor has open is closed only after this AGI ends.
            await finish_call(session.call_id, Outcome.ABANDONED_IN_PROMPT, self._deps, wait=False)

    async def _release(self, channel: AgiChannel) -> None:
        """No session: the call goes on unrecorded."""
        try:
            await channel.go_on_unrecorded()
        except AsteriskError as error:
            log.info("could not set CALLREC_RECORD=no: %s", error)

    async def _hung_up(self, request: AgiRequest) -> None:
        """The dialplan's hangup handler reports the end of a call that went on."""
        self.stats.hangups += 1
        call_id = request.arg(0)
        if not call_id:
            log.debug("hangup report for a channel without a call id (not ours)")
            return
        if not CALL_ID.fullmatch(call_id):
            log.warning("hangup report names a malformed call id %s", shown(call_id))
            return
        row = await self._deps.ledger.get_call(call_id)
        if row is None:
            log.warning("hangup report for unknown call %s", call_id)
            return
        if row.ended_at is not None:
            log.info("call %s was already finished (%s)", call_id, row.outcome)
            return
        # A call is still open here only if it went on: calls that ended in the prompt
        # were finished by their own connection before it closed.
        report = hangup_report(
            decided=row.decided_at is not None,
            answered_time=request.arg(1),
            abandoned=request.arg(2),
            agent=request.arg(3),
        )
        if report.needs_audio() and row.recording_file is not None:
            # No queue on this leg (a callback's customer leg): judged by its audio, as
            # ARI mode judges a leg whose queue reported nothing.
            report.saw_recorded_audio(await asyncio.to_thread(has_audio, row.recording_file))
        outcome = report.outcome()
        # Not waited for here: Asterisk detaches MixMonitor, which then writes its last
        # frames and closes the file, only after this hangup handler has ended
        # (main/channel.c, ast_hangup: hangup handlers, then destroy_hooks).
        await finish_call(
            call_id,
            outcome,
            self._deps,
            wait=False,
            agent=agent_name(request.arg(3)),
            file=row.recording_file,
        )

    def _allowed(self, writer: asyncio.StreamWriter) -> bool:
        peer = writer.get_extra_info("peername")
        if not isinstance(peer, tuple) or not peer:
            return False
        try:
            address = ipaddress.ip_address(str(peer[0]).partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address in self._allow


def _address(text: str, key: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"{key}: {text!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "an unknown peer"
