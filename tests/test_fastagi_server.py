"""The FastAGI server under misbehaving peers, over real TCP on loopback: probes that
connect and close, silence, 1 MB lines, garbage, peers not on the allow-list, and many
calls at once. None of them may stall the server or another call."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fakes import AgiPeer, Harness, fastagi_harness, load_transcript

from agi.fastagi import FastAgiServer
from flows.errors import ConfigError
from flows.outcome import Outcome
from flows.policy import Decision, Policy

ENVIRONMENT = "".join(
    f"{step.text}\n" for step in load_transcript("inbound_sales.agi") if step.kind == "send"
).split("\n\n")[0]
SALES_HEADER = (ENVIRONMENT + "\n\n").encode()


@pytest.fixture
async def agi(tmp_path: Path) -> AsyncIterator[Harness]:
    async with fastagi_harness(tmp_path, command_timeout=0.5, header_timeout=0.5) as harness:
        yield harness


def call_id_in(verbose: bytes) -> str:
    match = re.fullmatch(rb'VERBOSE "callrec call ([0-9a-f]{32})" 3\n', verbose)
    assert match is not None, verbose
    return match[1].decode()


async def closed_by_server(reader: asyncio.StreamReader, within: float = 3.0) -> bytes:
    """Everything the server sends until it closes; fails if it does not close in time."""
    try:
        return await asyncio.wait_for(reader.read(), within)
    except ConnectionResetError:
        return b""


async def probe(port: int) -> None:
    """Connect and close at once, sending nothing (what broke panoramisk)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def send_and_watch(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return await closed_by_server(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_connect_and_close_probes_leave_the_server_serving(agi: Harness) -> None:
    """A hundred connect-and-close probes: the server neither spins nor stops serving."""
    await asyncio.gather(*(probe(agi.port) for _ in range(100)))
    await asyncio.wait_for(agi.server.idle.wait(), 2.0)
    cpu = time.process_time()
    await asyncio.sleep(0.5)
    assert time.process_time() - cpu < 0.1, "the server burns CPU after the probes"
    bound = await agi.peer().play("inbound_sales.agi", {"spool": str(agi.spool)})
    assert (await agi.store.get_call(bound["call_id"])) is not None
    assert agi.server.stats.failed == 100


@pytest.mark.parametrize(
    "payload",
    [
        b"x" * 1_048_576,  # a 1 MB line without a line break
        b"agi_network: yes\nagi_arg_1: " + b"9" * 1_048_576 + b"\n\n",
        b"GET / HTTP/1.1\r\nHost: controller\r\n\r\n",
        b"\n",  # an empty environment
        b"agi_network: yes\nagi_network_script: inbound\n",  # no end, then silence
        b"",  # silence
        b"\xff\xfe\x00garbage\n\n",
    ],
    ids=["1MB-line", "1MB-argument", "http", "empty", "unfinished", "silence", "binary"],
)
async def test_bad_peers_are_closed_quickly(agi: Harness, payload: bytes) -> None:
    """Each bad opening is closed within the header timeout, with nothing sent back."""
    started = time.monotonic()
    assert await send_and_watch(agi.port, payload) == b""
    assert time.monotonic() - started < 2.0
    await asyncio.wait_for(agi.server.idle.wait(), 2.0)
    assert agi.server.stats.failed == 1
    assert await agi.calls_in_ledger() == 0


async def test_bad_peers_in_parallel_do_not_stall_good_calls(agi: Harness) -> None:
    """Probes, silence, 1 MB lines and garbage by the dozen, alongside good calls: every
    good call completes as if alone."""
    bad = [
        *(probe(agi.port) for _ in range(30)),
        *(send_and_watch(agi.port, b"y" * 1_048_576) for _ in range(10)),
        *(send_and_watch(agi.port, b"") for _ in range(10)),
        *(send_and_watch(agi.port, b"\x00\x01 nonsense\n\n") for _ in range(10)),
    ]
    transcripts = ["inbound_sales.agi", "inbound_service_refusal.agi"] * 5
    good = [AgiPeer(agi.port).play(t, {"spool": str(agi.spool)}) for t in transcripts]
    started = time.monotonic()
    results = await asyncio.gather(*good, *bad)
    assert time.monotonic() - started < 5.0
    decisions = []
    for bound in results[: len(good)]:
        assert isinstance(bound, dict)
        row = await agi.store.get_call(bound["call_id"])
        assert row is not None
        decisions.append(row.decision)
    assert sorted(decisions) == [Decision.RECORD] * 5 + [Decision.REFUSE] * 5
    await asyncio.wait_for(agi.server.idle.wait(), 2.0)
    assert agi.server.stats.sessions == 10
    assert agi.server.stats.failed == 60


async def test_many_parallel_calls_are_all_decided(agi: Harness) -> None:
    """Fifty calls at once, each with its own decision in the ledger."""
    names = [
        "inbound_sales.agi",
        "inbound_service_consent.agi",
        "inbound_service_refusal.agi",
        "inbound_silence_twice.agi",
        "inbound_hangup_in_prompt.agi",
    ] * 10
    results = await asyncio.gather(
        *(AgiPeer(agi.port).play(name, {"spool": str(agi.spool)}) for name in names)
    )
    expected = {
        "inbound_sales.agi": Decision.RECORD,
        "inbound_service_consent.agi": Decision.RECORD,
        "inbound_service_refusal.agi": Decision.REFUSE,
        "inbound_silence_twice.agi": Decision.NONE,
        "inbound_hangup_in_prompt.agi": Decision.NONE,
    }
    for name, bound in zip(names, results, strict=True):
        row = await agi.store.get_call(bound["call_id"])
        assert row is not None and row.decision is expected[name], name
    assert len({bound["call_id"] for bound in results}) == 50


async def test_silent_asterisk_mid_call_fails_closed(agi: Harness) -> None:
    """No reply to a command within the timeout: the call is decided as no decision and
    the connection closed (the dialplan goes on, unrecorded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", agi.port)
    writer.write(SALES_HEADER)
    await writer.drain()
    first = await asyncio.wait_for(reader.readline(), 2.0)
    assert first.startswith(b'VERBOSE "callrec call ')
    call_id = call_id_in(first)
    writer.write(b"200 result=1\n")
    assert await asyncio.wait_for(reader.readline(), 2.0) == b"ANSWER\n"
    started = time.monotonic()
    assert await closed_by_server(reader) == b""  # nothing more once the reply is overdue
    assert 0.4 < time.monotonic() - started < 2.0
    writer.close()
    row = await agi.store.get_call(call_id)
    assert row is not None
    assert row.decision is Decision.NONE and row.recording_file is None
    assert row.reason is not None and "control of the channel was lost" in row.reason


async def test_one_megabyte_reply_mid_call_fails_closed(agi: Harness) -> None:
    """A reply line of 1 MB is refused at the line limit: the connection is closed at once
    and the call goes on without a decision."""
    reader, writer = await asyncio.open_connection("127.0.0.1", agi.port)
    writer.write(SALES_HEADER)
    call_id = call_id_in(await asyncio.wait_for(reader.readline(), 2.0))
    writer.write(b"200 result=1 (" + b"x" * 1_048_576 + b")\n")
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    started = time.monotonic()
    assert await closed_by_server(reader) == b""
    assert time.monotonic() - started < 1.0
    writer.close()
    await asyncio.wait_for(agi.server.idle.wait(), 2.0)
    row = await agi.store.get_call(call_id)
    assert row is not None
    assert (row.decision, row.recording_file) == (Decision.NONE, None)


async def test_peer_that_vanishes_mid_prompt_is_a_hang_up(agi: Harness) -> None:
    """Asterisk closing the connection while the prompt plays ends the call as a hang-up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", agi.port)
    writer.write(SALES_HEADER)
    call_id = ""
    for reply in (b"200 result=1\n", b"200 result=0\n", b"200 result=0\n"):
        line = await asyncio.wait_for(reader.readline(), 2.0)
        if line.startswith(b"VERBOSE"):
            call_id = call_id_in(line)
        writer.write(reply)
    assert (await asyncio.wait_for(reader.readline(), 2.0)).startswith(b"STREAM FILE")
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(agi.server.idle.wait(), 2.0)
    row = await agi.store.get_call(call_id)
    assert row is not None
    assert row.decision is Decision.NONE
    assert row.outcome is Outcome.ABANDONED_IN_PROMPT


async def test_peers_not_on_the_allow_list_are_closed_at_once(tmp_path: Path) -> None:
    """A connection from an address not allowed is closed before anything is read."""
    async with fastagi_harness(tmp_path, allow=("192.0.2.10",)) as agi:
        assert await send_and_watch(agi.port, SALES_HEADER) == b""
        assert agi.server.stats.refused == 1
        assert agi.server.stats.connections == 0
        assert await agi.calls_in_ledger() == 0


async def test_stop_closes_live_calls_after_the_grace(tmp_path: Path) -> None:
    """`stop` gives a live call its grace, then closes it, and accepts nobody after."""
    async with fastagi_harness(tmp_path) as agi:
        reader, writer = await asyncio.open_connection("127.0.0.1", agi.port)
        writer.write(SALES_HEADER)
        call_id = call_id_in(await asyncio.wait_for(reader.readline(), 2.0))
        started = time.monotonic()
        await agi.server.stop(grace=0.3)
        assert 0.25 < time.monotonic() - started < 2.0
        assert await closed_by_server(reader) == b""
        assert agi.server.live_connections == 0
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", agi.port)
        writer.close()
        row = await agi.store.get_call(call_id)
        assert row is not None
        assert (row.decision, row.recording_file) == (Decision.NONE, None)
        assert row.reason is not None and "shutting down" in row.reason


async def test_allow_list_entries_must_be_addresses(agi: Harness) -> None:
    """A host name or a typo in the allow-list is a configuration error, not a silent gap."""
    with pytest.raises(ConfigError, match=r"fastagi\.allow"):
        FastAgiServer(agi.deps, Policy(), allow=("controller.local",))


async def test_busy_port_is_a_configuration_error(agi: Harness) -> None:
    """Listening on a port already taken says which address failed."""
    other = FastAgiServer(agi.deps, Policy(), port=agi.port)
    with pytest.raises(ConfigError, match=str(agi.port)):
        await other.start()
