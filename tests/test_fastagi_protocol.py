"""The pure FastAGI wire format: replies, the environment block, and command quoting,
checked against the formats `res/res_agi.c` writes and fuzzed with hypothesis."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agi.agi_protocol import (
    AgiFailure,
    AgiHangup,
    AgiResult,
    format_command,
    parse_agi_environment,
    parse_agi_reply,
    quote,
)
from flows.errors import AsteriskError, ProtocolViolation

ENVIRONMENT = [
    "agi_network: yes",
    "agi_network_script: inbound",
    "agi_request: agi://127.0.0.1:4573/inbound",
    "agi_channel: PJSIP/a1-trunk-00000012",
    "agi_uniqueid: 1741082400.18",
    "agi_callerid: 041123456",
    "agi_accountcode: ",
    "agi_arg_1: 040404040",
    "agi_arg_2: with spaces, and a comma",
]


def asterisk_parse_args(line: str) -> list[str]:
    """A line-for-line port of res_agi.c's `parse_args`: how Asterisk splits a command."""
    buf: list[str] = []
    starts: list[int] = []
    quoted = escaped = False
    whitespace = True
    for char in line:
        if char == '"' and not escaped:
            quoted = not quoted
            if quoted and whitespace:
                starts.append(len(buf))
                whitespace = False
            continue
        if char in " \t" and not quoted and not escaped:
            whitespace = True
            buf.append("\0")
            continue
        if char == "\\" and not escaped:
            escaped = True
            continue
        if whitespace:
            starts.append(len(buf))
            whitespace = False
        buf.append(char)
        escaped = False
    buf.append("\0")
    text = "".join(buf)
    return [text[start : text.index("\0", start)] for start in starts]


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("200 result=0", AgiResult("0")),
        ("200 result=1 (testvariable)", AgiResult("1", "testvariable")),
        ("200 result=1 (The time is 1578493800)", AgiResult("1", "The time is 1578493800")),
        ("200 result=0 endpos=163840", AgiResult("0", None, {"endpos": "163840"})),
        ("200 result=-1 endpos=0", AgiResult("-1", None, {"endpos": "0"})),
        ("200 result=49 endpos=64000", AgiResult("49", None, {"endpos": "64000"})),
        ("200 result=0 (timeout)", AgiResult("0", "timeout")),
        ("200 result=-1 (hangup) endpos=800", AgiResult("-1", "hangup", {"endpos": "800"})),
        ("200 result=1 (f(x) = (y)) endpos=5", AgiResult("1", "f(x) = (y)", {"endpos": "5"})),
        (
            "200 result=1 (digit) digit=5 endpos=1200",
            AgiResult("1", "digit", {"digit": "5", "endpos": "1200"}),
        ),
        ("200 result=0\r", AgiResult("0")),
        ("510 Invalid or unknown command", AgiFailure(510, "Invalid or unknown command")),
        (
            "511 Command Not Permitted on a dead channel or intercept routine",
            AgiFailure(511, "Command Not Permitted on a dead channel or intercept routine"),
        ),
        (
            "520 Invalid command syntax.  Proper usage not available.",
            AgiFailure(520, "Invalid command syntax.  Proper usage not available."),
        ),
        ("HANGUP", AgiHangup()),
    ],
)
def test_replies_from_res_agi_parse(line: str, reply: object) -> None:
    """Every reply format res_agi.c writes parses to what it says."""
    assert parse_agi_reply(line) == reply


def test_usage_block_parses_with_its_text() -> None:
    """A 520- block keeps the usage lines, blank ones included."""
    block = "\n".join(
        [
            "520-Invalid command syntax.  Proper usage follows:",
            "Send the given file, allowing playback to be interrupted by the given digits.",
            "",
            "It sets the following channel variables upon completion:",
            "520 End of proper usage.",
        ]
    )
    reply = parse_agi_reply(block)
    assert isinstance(reply, AgiFailure)
    assert reply.code == 520
    assert reply.message == "Invalid command syntax.  Proper usage follows:"
    assert len(reply.usage) == 3 and reply.usage[1] == ""


@pytest.mark.parametrize(
    "line",
    [
        "",
        "200",
        "200 result",
        "200 OK",
        "200 result=0 endpos=1 endpos=2",
        "200 result=0 trailing words",
        "201 result=0",
        "500 Internal",
        "510-Invalid or unknown command",
        "520-Invalid command syntax.  Proper usage follows:",
        "520-start\n520 end\n520 end again",
        "520-start\nno end",
        "HANGUP now",
        "hangup",
        "200 result=0\n200 result=0",
        "\x00\x01\x02",
    ],
)
def test_garbage_is_a_protocol_violation(line: str) -> None:
    """Anything that is not one AGI reply raises ProtocolViolation, nothing else."""
    with pytest.raises(ProtocolViolation):
        parse_agi_reply(line)


def test_non_numeric_result_is_refused_when_a_number_is_due() -> None:
    """`number()` refuses a result that is not an integer."""
    reply = parse_agi_reply("200 result=12# (timeout)")  # GET DATA can answer this
    assert isinstance(reply, AgiResult) and reply == AgiResult("12#", "timeout")
    with pytest.raises(ProtocolViolation):
        reply.number()


@settings(max_examples=800)
@given(st.text())
def test_parser_returns_a_reply_or_raises_protocol_violation(text: str) -> None:
    """Fuzzed text: the parser returns a reply or raises ProtocolViolation, never another
    error."""
    try:
        reply = parse_agi_reply(text)
    except ProtocolViolation:
        return
    assert isinstance(reply, AgiResult | AgiFailure | AgiHangup)


@settings(max_examples=400)
@given(
    st.sampled_from(["200 result=", "510 ", "511 ", "520 ", "520-", "HANGUP", "200 result=-"]),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40),
)
def test_parser_fuzzed_near_valid_replies(prefix: str, rest: str) -> None:
    """Replies that start right and go on with anything: a reply or ProtocolViolation."""
    with contextlib.suppress(ProtocolViolation):
        parse_agi_reply(prefix + rest)


@given(
    st.integers(min_value=-1, max_value=2**31),
    st.none() | st.text(alphabet=st.characters(blacklist_characters="\r\n"), max_size=30),
    st.dictionaries(
        st.sampled_from(["endpos", "digit", "results"]),
        st.text(alphabet="0123456789abc", max_size=8),
        max_size=3,
    ),
)
def test_written_replies_read_back(result: int, data: str | None, fields: dict[str, str]) -> None:
    """A reply written as ast_agi_send writes it parses back to its parts."""
    line = f"200 result={result}"
    if data is not None:
        line += f" ({data})"
    line += "".join(f" {k}={v}" for k, v in fields.items())
    reply = parse_agi_reply(line)
    assert isinstance(reply, AgiResult)
    assert reply.number() == result
    assert reply.fields == fields
    if data is not None and not any(f" {k}=" in data for k in ("endpos", "digit", "results")):
        assert reply.data == data


def test_environment_parses_route_and_arguments() -> None:
    """The environment gives the route, the arguments in order, and the channel's facts."""
    request = parse_agi_environment(ENVIRONMENT)
    assert request.route == "inbound"
    assert request.args == ("040404040", "with spaces, and a comma")
    assert request.channel_id == "1741082400.18"
    assert request.callerid == "041123456"
    assert request.env["agi_accountcode"] == ""
    assert request.arg(5) == ""


@pytest.mark.parametrize(
    ("script", "route"),
    [("inbound", "inbound"), ("/callback?x=1", "callback"), ("callrec/hangup/", "callrec/hangup")],
)
def test_route_comes_from_the_network_script(script: str, route: str) -> None:
    """The route is the script path without slashes or a query."""
    lines = ["agi_network: yes", f"agi_network_script: {script}"]
    assert parse_agi_environment(lines).route == route


def test_route_falls_back_to_the_request_url() -> None:
    """Without agi_network_script the path of agi_request names the route."""
    lines = ["agi_network: yes", "agi_request: agi://10.0.0.5:4573/callee?a=b"]
    assert parse_agi_environment(lines).route == "callee"


def test_unknown_callerid_is_none() -> None:
    """Asterisk writes `unknown` for a caller without a number."""
    lines = [*ENVIRONMENT[:5], "agi_callerid: unknown"]
    assert parse_agi_environment(lines).callerid is None


@pytest.mark.parametrize(
    "lines",
    [
        [],
        ["agi_network_script: inbound"],  # not FastAGI
        ["agi_network: yes"],  # no script
        ["agi_network: yes", "agi_network_script: /"],
        [*ENVIRONMENT, "agi_network: yes"],  # a key twice
        [*ENVIRONMENT, "GET / HTTP/1.1"],
        [*ENVIRONMENT, "agi_arg_4: gap"],
        [*ENVIRONMENT, "AGI_SHOUT: no"],
        ["agi_network: yes"] * 300,
    ],
)
def test_bad_environment_is_a_protocol_violation(lines: list[str]) -> None:
    """A missing, malformed, duplicated or gapped environment raises ProtocolViolation."""
    with pytest.raises(ProtocolViolation):
        parse_agi_environment(lines)


@settings(max_examples=300)
@given(st.lists(st.text(max_size=40), max_size=12))
def test_environment_fuzz_returns_a_request_or_raises_protocol_violation(
    lines: list[str],
) -> None:
    """Fuzzed environment lines: a request or ProtocolViolation, never another error."""
    with contextlib.suppress(ProtocolViolation):
        parse_agi_environment(["agi_network: yes", "agi_network_script: x", *lines])


def test_commands_read_as_asterisk_splits_them() -> None:
    """The lines this server sends split into the intended words in Asterisk."""
    assert format_command("STREAM", "FILE", "callrec-notice", "0123456789*#") == (
        'STREAM FILE callrec-notice "0123456789*#"'
    )
    assert format_command("STREAM", "FILE", "callrec-notice", "") == (
        'STREAM FILE callrec-notice ""'
    )
    assert asterisk_parse_args('STREAM FILE callrec-notice ""') == [
        "STREAM",
        "FILE",
        "callrec-notice",
        "",
    ]
    assert format_command("VERBOSE", 'say "hi" \\ there', "3") == (
        'VERBOSE "say \\"hi\\" \\\\ there" 3'
    )


@settings(max_examples=500)
@given(
    st.lists(
        st.text(alphabet=st.characters(blacklist_characters="\r\n\0", blacklist_categories=["Cs"])),
        min_size=1,
        max_size=6,
    )
)
def test_quoting_round_trips_through_asterisks_parser(words: list[str]) -> None:
    """Any words without line breaks or NUL reach Asterisk as exactly those words."""
    assert asterisk_parse_args(format_command(*words)) == words


@pytest.mark.parametrize("word", ["a\nb", "a\rb", "a\0b"])
def test_line_breaks_cannot_be_quoted(word: str) -> None:
    """A word that would end the command line early is refused before anything is sent."""
    with pytest.raises(AsteriskError):
        quote(word)
