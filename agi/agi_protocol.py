"""The FastAGI wire format, as pure functions: no sockets, no asyncio, no clock.

What Asterisk sends (`res/res_agi.c`): on connect, `agi_network: yes`, then
`agi_network_script: <path after the host>` when the URL names one, then the environment
of `setup_env` (`agi_request: <the URL>`, `agi_channel`, `agi_uniqueid`, `agi_callerid`,
..., `agi_arg_1`..`agi_arg_N`) and an empty line. Then it waits for one command line at a
time and answers each with one reply:

* `200 result=<n>`, optionally followed by ` (<data>)` and ` key=value` fields
  (`200 result=0 endpos=163840` after `STREAM FILE`, `200 result=1 (testvariable)`);
* `510 Invalid or unknown command`;
* `511 Command Not Permitted on a dead channel or intercept routine`;
* `520 Invalid command syntax.  Proper usage not available.`, or the block
  `520-Invalid command syntax.  Proper usage follows:`, the usage text on any number of
  lines, `520 End of proper usage.`.

`HANGUP` arrives on a line of its own whenever the channel hangs up (unless the dialplan set
`AGISIGHUP=no`), in between replies: it is a notification, not the reply to anything.

Commands are split into words by Asterisk's `parse_args`: blanks separate words, a double
quote toggles quoting, a backslash escapes the next character. `format_command` quotes any
word that needs it and refuses (`AsteriskError`) what no quoting can carry: line breaks, NUL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from flows.errors import AsteriskError, ProtocolViolation
from flows.numbers import shown

SUCCESS = 200
INVALID_COMMAND = 510  # "Invalid or unknown command"
DEAD_CHANNEL = 511  # "Command Not Permitted on a dead channel or intercept routine"
USAGE = 520  # "Invalid command syntax"
FAILURE_CODES = frozenset({INVALID_COMMAND, DEAD_CHANNEL, USAGE})
HANGUP_NOTICE = "HANGUP"
USAGE_BLOCK_START = "520-"
USAGE_BLOCK_END = "520 "

MAX_ENVIRONMENT_LINES = 256  # setup_env sends about 22 lines plus the AGI() arguments
MAX_ARGUMENTS = 128  # res_agi.c's MAX_ARGS

_REPLY_200 = re.compile(
    r"200 result=(?P<result>\S*)"
    r"(?: \((?P<data>.*)\))?"  # greedy: data may itself hold parentheses
    r"(?P<fields>(?: [A-Za-z_]+=\S*)*)"
)
_FAILURE = re.compile(r"(?P<code>5\d\d)[ -](?P<message>.*)")
_ENV_LINE = re.compile(r"(?P<key>agi_[a-z0-9_]+):(?: (?P<value>.*))?")
_ARG_KEY = re.compile(r"agi_arg_(?P<n>[1-9][0-9]*)")
# Words Asterisk's parse_args takes as they are: no blank, quote, backslash, nor `*`/`#`
# (kept quoted so an escape-digit list reads the same as in Asterisk's documentation).
_BARE_WORD = re.compile(r"[A-Za-z0-9_./+:=,()@-]+")


@dataclass(frozen=True, slots=True)
class AgiResult:
    """A `200` reply."""

    result: str  # an integer for every command this server sends; text for GET DATA & co.
    data: str | None = None  # the text in parentheses, if any
    fields: Mapping[str, str] = field(default_factory=dict)  # endpos=..., results=...

    def number(self) -> int:
        """`result` as an integer, or `ProtocolViolation`."""
        try:
            return int(self.result)
        except ValueError:
            raise ProtocolViolation(f"result={shown(self.result)} is not a number") from None


@dataclass(frozen=True, slots=True)
class AgiFailure:
    """A `510`, `511` or `520` reply; `usage` holds the lines of a `520-` block."""

    code: int
    message: str
    usage: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AgiHangup:
    """The `HANGUP` notification: the channel hung up (it may still answer commands, dead)."""


AgiReply = AgiResult | AgiFailure | AgiHangup


def starts_usage_block(line: str) -> bool:
    """A `520-` line: the reply goes on until a line starting with `520 `."""
    return line.startswith(USAGE_BLOCK_START)


def ends_usage_block(line: str) -> bool:
    return line.startswith(USAGE_BLOCK_END)


def parse_agi_reply(text: str) -> AgiReply:
    """Parse one reply (one line, or a whole `520-` block) or raise `ProtocolViolation`."""
    if not isinstance(text, str):
        raise ProtocolViolation(f"an AGI reply is text, not {type(text).__name__}")
    lines = [line.removesuffix("\r") for line in text.removesuffix("\n").split("\n")]
    first = lines[0]
    if starts_usage_block(first):
        return _usage_block(lines)
    if len(lines) > 1:
        raise ProtocolViolation(f"{len(lines)} lines where one AGI reply was due: {shown(text)}")
    if first == HANGUP_NOTICE:
        return AgiHangup()
    if first.startswith("200 "):
        return _success(first)
    failure = _FAILURE.fullmatch(first)
    if failure is not None and first[3] == " ":
        code = int(failure["code"])
        if code in FAILURE_CODES:
            return AgiFailure(code, failure["message"].strip())
    raise ProtocolViolation(f"not an AGI reply: {shown(first)}")


def _success(line: str) -> AgiResult:
    match = _REPLY_200.fullmatch(line)
    if match is None:
        raise ProtocolViolation(f"malformed 200 reply: {shown(line)}")
    fields: dict[str, str] = {}
    for item in match["fields"].split():
        key, _, value = item.partition("=")
        if key in fields:
            raise ProtocolViolation(f"field {key} twice in {shown(line)}")
        fields[key] = value
    return AgiResult(result=match["result"], data=match["data"], fields=fields)


def _usage_block(lines: list[str]) -> AgiFailure:
    last = lines[-1]
    if len(lines) < 2 or not ends_usage_block(last):
        raise ProtocolViolation(f"a 520- usage block without its end: {shown(lines[-1])}")
    if any(ends_usage_block(line) for line in lines[1:-1]):
        raise ProtocolViolation("a 520- usage block with two ends")
    return AgiFailure(USAGE, lines[0][len(USAGE_BLOCK_START) :].strip(), tuple(lines[1:-1]))


@dataclass(frozen=True, slots=True)
class AgiRequest:
    """The environment block of one FastAGI connection."""

    env: Mapping[str, str]
    route: str  # the script path without slashes or query: "inbound", "hangup", ...
    args: tuple[str, ...]  # agi_arg_1.. in order

    @property
    def channel_id(self) -> str:
        return self.env.get("agi_uniqueid", "")

    @property
    def callerid(self) -> str | None:
        """The caller ID as Asterisk has it; None when it says there is none."""
        value = self.env.get("agi_callerid", "").strip()
        return None if value in ("", "unknown") else value

    def arg(self, index: int) -> str:
        """Argument `index` (0-based), empty when the dialplan passed fewer."""
        return self.args[index] if index < len(self.args) else ""


def parse_agi_environment(lines: Sequence[str]) -> AgiRequest:
    """Build the request from the environment lines (without the closing empty line)."""
    if not lines:
        raise ProtocolViolation("empty AGI environment")
    if len(lines) > MAX_ENVIRONMENT_LINES:
        raise ProtocolViolation(f"{len(lines)} environment lines; at most {MAX_ENVIRONMENT_LINES}")
    env: dict[str, str] = {}
    for line in lines:
        match = _ENV_LINE.fullmatch(line.removesuffix("\r"))
        if match is None:
            raise ProtocolViolation(f"not an AGI environment line: {shown(line)}")
        key = match["key"]
        if key in env:
            raise ProtocolViolation(f"{key} twice in the AGI environment")
        env[key] = match["value"] or ""
    if env.get("agi_network") != "yes":
        raise ProtocolViolation("not a FastAGI environment: no 'agi_network: yes'")
    return AgiRequest(env=env, route=_route(env), args=_arguments(env))


def _route(env: Mapping[str, str]) -> str:
    script = env.get("agi_network_script")
    if script is None:
        request = env.get("agi_request", "")
        if not request:
            raise ProtocolViolation("the AGI environment names no script")
        script = urlsplit(request).path
    path = script.partition("?")[0].strip("/")
    if not path:
        raise ProtocolViolation("the AGI environment names no script")
    return path


def _arguments(env: Mapping[str, str]) -> tuple[str, ...]:
    numbered: dict[int, str] = {}
    for key, value in env.items():
        match = _ARG_KEY.fullmatch(key)
        if match is not None:
            numbered[int(match["n"])] = value
    if len(numbered) > MAX_ARGUMENTS:
        raise ProtocolViolation(f"{len(numbered)} AGI arguments; at most {MAX_ARGUMENTS}")
    if sorted(numbered) != list(range(1, len(numbered) + 1)):
        raise ProtocolViolation(f"AGI arguments are not numbered 1..n: {sorted(numbered)}")
    return tuple(numbered[n] for n in range(1, len(numbered) + 1))


def quote(word: str) -> str:
    """`word` as one argument of Asterisk's `parse_args`."""
    if any(c in word for c in "\r\n\0"):
        raise AsteriskError(f"an AGI argument cannot hold a line break or NUL: {shown(word)}")
    if _BARE_WORD.fullmatch(word):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def format_command(*words: str) -> str:
    """One command line (without its newline); the first words are the command's name."""
    if not words:
        raise AsteriskError("an AGI command needs a name")
    return " ".join(quote(word) for word in words)
