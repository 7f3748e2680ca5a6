"""The simulated PBX's `AGI()`: a FastAGI client, as `res/res_agi.c` runs one.

`AGI(agi://host:port/<script>,arg1,...)` connects (to `Switch.fastagi` when set: the test's
server on a free port stands in for the dialplan's fixed `127.0.0.1:4573`), sends the
environment block of `setup_env`, then carries out one command at a time until the server
closes the connection: `ANSWER`, `STREAM FILE`, `WAIT FOR DIGIT`, `SET VARIABLE`, `EXEC`
(the dialplan applications the simulator has), `VERBOSE` and `HANGUP`; anything else
answers `510`. Replies are the ones `tests/agi_transcripts/` record from Asterisk.

When the channel hangs up while the script runs, `HANGUP` is sent on a line of its own (after
the reply of a command it interrupted); commands that need a live channel then answer
`511`. On a channel already hung up (a hangup handler, res_agi's DeadAGI) no `HANGUP` is
sent. `AGISTATUS` is `SUCCESS` when the server ended the script, `FAILURE` when it could
not be reached, `HANGUP` when the channel hung up meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from agi.simpbx.model import HANGUP, NEXT, NORMAL_CLEARING, Channel, Outcome

if TYPE_CHECKING:
    from agi.simpbx.core import Switch

log = logging.getLogger("callrec.simpbx")

DEFAULT_PORT = 4573
DEAD_CHANNEL = "511 Command Not Permitted on a dead channel or intercept routine"
UNKNOWN = "510 Invalid or unknown command"
_LIVE_ONLY = frozenset({"ANSWER", "STREAM FILE", "WAIT FOR DIGIT"})
_HUNG_UP = "hung up"


def parse_args(line: str) -> list[str]:
    """Asterisk's `parse_args`: blanks separate words, a double quote toggles quoting, a
    backslash takes the next character as it is."""
    words: list[str] = []
    current: list[str] = []
    quoted = escaped = started = False
    for char in line:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = started = True
        elif char == '"':
            quoted = not quoted
            started = True
        elif char in " \t" and not quoted:
            if started:
                words.append("".join(current))
                current, started = [], False
        else:
            current.append(char)
            started = True
    if started:
        words.append("".join(current))
    return words


async def agi(switch: Switch, channel: Channel, data: str) -> Outcome:
    url, *args = data.split(",")
    parts = urlsplit(url)
    script = parts.path.lstrip("/")
    address = switch.fastagi or (parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORT)
    dead = channel.hangup.is_set()
    if not dead and channel.first_playback_at is None:
        # No StasisStart to time keys from: a script's keys wait for the first prompt (keys
        # pressed before it would be lost, as run_agi drops them, and the call undecided).
        channel.dialplan_started_at = None
    try:
        reader, writer = await asyncio.open_connection(*address)
    except OSError as error:
        log.info("AGI: cannot reach %s:%d (%s)", *address, error.strerror)
        switch.set_var(channel, "AGISTATUS", "FAILURE")
        return HANGUP if channel.hangup.is_set() else NEXT
    session = _Session(switch, channel, reader, writer, dead=dead)
    try:
        await session.send_environment(url, script, args)
        await session.serve()
    except (ConnectionError, OSError) as error:
        log.info("AGI connection of %s ended: %s", channel.id, error)
    finally:
        session.watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await session.watcher
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    hung_up = channel.hangup.is_set()
    switch.set_var(channel, "AGISTATUS", "HANGUP" if hung_up and not dead else "SUCCESS")
    return HANGUP if hung_up else NEXT


class _Session:
    def __init__(
        self,
        switch: Switch,
        channel: Channel,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        dead: bool,
    ) -> None:
        self.switch = switch
        self.channel = channel
        self.reader = reader
        self.writer = writer
        self.dead = dead
        self.busy = False  # a command runs: its reply goes first, then HANGUP
        self.hangup_sent = dead  # a dead channel never announces its hang-up
        self.watcher = asyncio.get_running_loop().create_task(self._watch_hangup())

    async def send_environment(self, url: str, script: str, args: list[str]) -> None:
        channel = self.channel
        caller = channel.caller_number or "unknown"
        lines = [
            "agi_network: yes",
            f"agi_network_script: {script}",
            f"agi_request: {url}",
            f"agi_channel: {channel.name}",
            f"agi_language: {channel.language}",
            f"agi_type: {channel.name.partition('/')[0]}",
            f"agi_uniqueid: {channel.id}",
            "agi_version: 20.11.0",
            f"agi_callerid: {caller}",
            f"agi_calleridname: {channel.caller_name or 'unknown'}",
            "agi_callingpres: 0",
            "agi_callingani2: 0",
            "agi_callington: 0",
            "agi_callingtns: 0",
            "agi_dnid: unknown",
            "agi_rdnis: unknown",
            f"agi_context: {channel.context}",
            f"agi_extension: {channel.exten}",
            f"agi_priority: {channel.priority}",
            "agi_enhanced: 0.0",
            "agi_accountcode: ",
            "agi_threadid: 1",
            *(f"agi_arg_{n}: {value}" for n, value in enumerate(args, start=1)),
            "",
        ]
        await self._write("\n".join(lines) + "\n")

    async def serve(self) -> None:
        while True:
            raw = await self.reader.readline()
            if not raw.endswith(b"\n"):
                return  # the server ended the script
            words = parse_args(raw.decode("utf-8", errors="replace").strip())
            if not words:
                continue
            self.busy = True
            try:
                reply = await self._command(words)
            finally:
                self.busy = False
            await self._write(reply + "\n")
            await self._announce_hangup()

    async def _watch_hangup(self) -> None:
        await self.channel.hangup.wait()
        if not self.busy:
            await self._announce_hangup()

    async def _announce_hangup(self) -> None:
        if self.channel.hangup.is_set() and not self.hangup_sent:
            self.hangup_sent = True
            with contextlib.suppress(ConnectionError, OSError):
                await self._write("HANGUP\n")

    async def _write(self, text: str) -> None:
        self.writer.write(text.encode())
        await self.writer.drain()

    async def _command(self, words: list[str]) -> str:
        name = " ".join(word.upper() for word in words[:3])
        for command in ("ANSWER", "STREAM FILE", "WAIT FOR DIGIT", "SET VARIABLE"):
            if name.startswith(command):
                break
        else:
            command = words[0].upper()
        args = words[len(command.split()) :]
        if command in _LIVE_ONLY and self.channel.hangup.is_set():
            return DEAD_CHANNEL
        match command:
            case "ANSWER":
                self.switch.set_state(self.channel, "Up")
                return "200 result=0"
            case "STREAM FILE" if args:
                return await self._stream(args[0], args[1] if len(args) > 1 else "")
            case "WAIT FOR DIGIT" if args:
                return await self._wait_for_digit(args[0])
            case "SET VARIABLE" if len(args) >= 2:
                self.switch.write_variable(self.channel, args[0], args[1])
                return "200 result=1"
            case "EXEC" if args:
                return await self._exec(args[0], " ".join(args[1:]))
            case "VERBOSE":
                return "200 result=1"
            case "HANGUP":
                self.switch.request_hangup(self.channel, NORMAL_CLEARING, soft=True)
                return "200 result=1"
        return UNKNOWN

    async def _stream(self, prompt: str, escape: str) -> str:
        switch, channel = self.switch, self.channel
        duration = switch.media_duration(f"sound:{prompt}")
        if duration is None:
            return "200 result=-1 endpos=0"  # no such sound: Asterisk's answer for both
        _drain(channel)
        channel.prompts.append(prompt)
        if channel.first_playback_at is None:
            channel.first_playback_at = switch.now
            channel.first_playback.set()
        started = switch.now
        digit = await _next_digit(switch, channel, duration, escape)
        endpos = round(switch.script_seconds_since(started) * 8000)
        if digit == _HUNG_UP:
            return f"200 result=-1 endpos={endpos}"
        if digit is None:
            return f"200 result=0 endpos={endpos}"
        return f"200 result={ord(digit)} endpos={endpos}"

    async def _wait_for_digit(self, timeout_ms: str) -> str:
        try:
            seconds = int(timeout_ms) / 1000
        except ValueError:
            return "520 Invalid command syntax.  Proper usage not available."
        digit = await _next_digit(self.switch, self.channel, seconds, None)
        if digit == _HUNG_UP:
            return "200 result=-1"
        return f"200 result={ord(digit) if digit else 0}"

    async def _exec(self, application: str, data: str) -> str:
        run = self.switch.applications().get(application)
        if run is None:
            return "200 result=-2"
        outcome = await run(self.channel, data)
        return "200 result=-1" if outcome == HANGUP else "200 result=0"


def _drain(channel: Channel) -> None:
    """Keys pressed while nothing listened are gone (run_agi reads and drops them)."""
    while not channel.dtmf.empty():
        channel.dtmf.get_nowait()


async def _next_digit(
    switch: Switch, channel: Channel, seconds: float, accept: str | None
) -> str | None:
    """The first key (of `accept`, when given) within `seconds` of script time; None when
    none came, `_HUNG_UP` when the channel hung up first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds * switch.time_scale
    while True:
        if channel.hangup.is_set():
            return _HUNG_UP
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        key = asyncio.ensure_future(channel.dtmf.get())
        gone = asyncio.ensure_future(channel.hangup.wait())
        done, _ = await asyncio.wait(
            {key, gone}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
        )
        gone.cancel()
        if key in done:
            digit = key.result()
            if accept is None or digit in accept:
                return digit
            continue
        key.cancel()
