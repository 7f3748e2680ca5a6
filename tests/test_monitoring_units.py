"""The parts behind monitoring, each with real sockets and files: sd_notify datagrams
(path and abstract sockets, the watchdog of a stuck loop), log formats (journald, JSON), the
`[monitor]` setting, the sweep's one summary line and a refused ARI login told once."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from cli_helpers import callrec
from storage_helpers import POLICY, T0, open_store, record_call
from test_cli_input import one_line_error

from agi.ari import AriClient
from agi.simpbx import SimulatedPbx
from callrec import logs
from callrec.config import load_settings
from callrec.metrics import Metrics, MonitorServer, callbacks_count
from callrec.sdnotify import Notifier
from flows.errors import ConfigError


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[socket.socket]:
    """systemd's side of $NOTIFY_SOCKET: a bound unix datagram socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = Path("/tmp") / f"sdn-{os.getpid()}-{time.monotonic_ns()}.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        yield sock
    finally:
        sock.close()
        path.unlink(missing_ok=True)


def test_ready_and_status_reach_the_notify_socket(listener: socket.socket) -> None:
    """READY=1 goes once with the status and the main pid; a status is sent when it
    changes, not again when it does not."""
    notifier = Notifier({"NOTIFY_SOCKET": listener.getsockname()})
    notifier.ready("serving: 0 call(s)")
    notifier.ready("serving: 0 call(s)")
    notifier.status("serving: 1 call(s)")
    notifier.status("serving: 1 call(s)")
    notifier.stopping()
    listener.settimeout(0.5)
    received = []
    with pytest.raises(TimeoutError):
        while True:
            received.append(listener.recv(4096).decode())
    assert received == [
        f"READY=1\nSTATUS=serving: 0 call(s)\nMAINPID={os.getpid()}",
        "STATUS=serving: 1 call(s)",
        "STOPPING=1\nSTATUS=stopping",
    ]


def test_an_abstract_notify_socket_is_reached() -> None:
    """`@name` in $NOTIFY_SOCKET is a socket in the abstract namespace."""
    name = f"callrec-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).send("READY=1")
        assert sock.recv(4096) == b"READY=1"


def test_without_systemd_nothing_is_sent() -> None:
    """Outside systemd (no $NOTIFY_SOCKET) notifying is a quiet no-op."""
    notifier = Notifier({})
    assert not notifier.enabled and not notifier.send("READY=1")
    assert notifier.watchdog_interval is None


def test_a_watchdog_meant_for_another_process_is_ignored() -> None:
    """$WATCHDOG_PID naming another process means the watchdog is not ours to feed."""
    env = {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "2000000"}
    assert Notifier(env).watchdog_interval == 2.0
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 2.0
    assert Notifier({**env, "WATCHDOG_PID": "1"}).watchdog_interval is None


async def test_a_stuck_event_loop_stops_feeding_the_watchdog(listener: socket.socket) -> None:
    """WATCHDOG=1 comes at half of $WATCHDOG_USEC while the loop turns, none while it is
    blocked, and again once it turns."""
    notifier = Notifier({"NOTIFY_SOCKET": listener.getsockname(), "WATCHDOG_USEC": "200000"})
    arrivals: list[float] = []
    listener.settimeout(0.1)
    done = threading.Event()

    def receive() -> None:
        while not done.is_set():
            try:
                if listener.recv(64) == b"WATCHDOG=1":
                    arrivals.append(time.monotonic())
            except TimeoutError:
                continue

    thread = threading.Thread(target=receive)
    thread.start()
    feeder = asyncio.create_task(notifier.feed_watchdog())
    try:
        await asyncio.sleep(0.5)
        assert len(arrivals) >= 2
        blocked_from = time.monotonic()
        time.sleep(1.0)  # the loop is stuck: nothing can feed the watchdog
        blocked_until = time.monotonic()
        await asyncio.sleep(0.5)
    finally:
        feeder.cancel()
        done.set()
        thread.join()
    # (a datagram sent just before the block may be read a little later)
    during = [t for t in arrivals if blocked_from + 0.3 < t < blocked_until - 0.05]
    assert during == []
    assert any(t > blocked_until for t in arrivals)


def test_under_journald_text_lines_carry_no_timestamp(tmp_path: Path) -> None:
    """When $JOURNAL_STREAM names standard error, a line is `<priority>LEVEL logger: msg`
    (the journal stamps the time); elsewhere it starts with the time."""
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        status = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        handler = logs.configure("text", logging.INFO, stream=stream, env=env)
        try:
            logging.getLogger("callrec.test").warning("one %s", "thing")
            logs.configure("text", logging.INFO, stream=stream, env={"JOURNAL_STREAM": "1:2"})
            logging.getLogger("callrec.test").warning("two")
        finally:
            logging.getLogger().removeHandler(handler)
    journal, plain = path.read_text().splitlines()
    assert journal == "<4>WARNING callrec.test: one thing"
    assert plain.endswith(" WARNING callrec.test: two")
    assert plain[:4].isdigit()  # the year: a time comes first


def test_json_lines_mask_what_looks_like_a_number() -> None:
    """A number that reached a log call anyway is masked in the JSON line, its extras too,
    and a call's id is lifted out of "call %s: ..." messages."""
    stream = io.StringIO()
    handler = logs.configure("json", logging.INFO, stream=stream, env={})
    try:
        log = logging.getLogger("callrec.test")
        log.warning("call %s: caller %s", "ab" * 16, "+386 41 123 456")
        log.info("dialled", extra={"target": "+38641123456", "attempt": 2})
    finally:
        logging.getLogger().removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["call_id"] == "ab" * 16
    assert first["message"] == f"call {'ab' * 16}: caller {logs.MASK}"
    assert second["target"] == logs.MASK and second["attempt"] == 2
    assert "41123456" not in stream.getvalue().replace(" ", "")


@pytest.mark.parametrize(
    ("value", "listen"),
    [
        ('"127.0.0.1:9464"', ("127.0.0.1", 9464)),
        ('"[::1]:9000"', ("::1", 9000)),
        ('""', None),
        ("false", None),
    ],
)
def test_monitor_listen_is_an_address_or_off(
    tmp_path: Path, value: str, listen: tuple[str, int] | None
) -> None:
    """`[monitor] listen` takes IP:port, [IPv6]:port, or "" / false to turn it off."""
    config = tmp_path / "c.toml"
    config.write_text(f"[monitor]\nlisten = {value}\n")
    assert load_settings(config, env={}).monitor.listen == listen


def test_monitor_listens_on_loopback_by_default(tmp_path: Path) -> None:
    """Without a setting the endpoint is on 127.0.0.1:9464, not on every address."""
    config = tmp_path / "c.toml"
    config.write_text("")
    assert load_settings(config, env={}).monitor.listen == ("127.0.0.1", 9464)


@pytest.mark.parametrize("value", ['"localhost:9464"', '"127.0.0.1"', '"127.0.0.1:99999"', "5"])
def test_a_bad_monitor_address_is_one_clear_error(tmp_path: Path, value: str) -> None:
    """A host name, a missing or impossible port is refused at start, naming the key."""
    config = tmp_path / "c.toml"
    config.write_text(f"[monitor]\nlisten = {value}\n")
    with pytest.raises(ConfigError, match=r"monitor\.listen"):
        load_settings(config, env={})
    result = callrec("fastagi", data_dir=tmp_path / "store", config=config, check=False)
    assert "monitor.listen" in one_line_error(result)


async def test_a_sweep_prints_one_line_not_every_id(tmp_path: Path, spool: Path) -> None:
    """`callrec sweep` that deletes 25 recordings prints one summary line (deleted, failed,
    time), no recording id; --json still lists every id."""
    data = tmp_path / "store"
    store = await open_store(data, POLICY, create=True)
    try:
        for _ in range(25):
            call_id, file = await record_call(store, spool)
            await store.ingest(call_id, file, T0 + timedelta(minutes=4))
        ids = [r.id for r in await store.recordings()]
    finally:
        await store.close()
    later = "2031-01-01T00:00:00+00:00"
    dry = callrec("sweep", "--dry-run", "--json", "--now", later, data_dir=data)
    assert sorted(json.loads(dry.stdout)["deleted"]) == sorted(ids)
    result = callrec("sweep", "--now", later, data_dir=data)
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert "deleted 25 recording(s), 0 failed, in " in lines[0]
    assert not any(recording_id in result.stdout + result.stderr for recording_id in ids)


async def test_a_refused_login_is_logged_once_however_often_it_is_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Against a PBX that refuses the password, the client retries and says so in one
    error line (with the hint it was given), not once per attempt."""
    sim = SimulatedPbx(password="right")
    await sim.start()
    client = AriClient(
        sim.base_url,
        "callrec",
        "wrong",
        "callrec",
        backoff_initial=0.01,
        backoff_max=0.02,
        credentials_hint="fix ari.user",
    )
    caplog.set_level(logging.DEBUG, logger="callrec.ari")

    async def listen() -> None:
        async for _ in client.events():
            pass

    task = asyncio.create_task(listen())
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while client.connect_attempts < 5:
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
    finally:
        await client.close()
        await asyncio.wait_for(task, 5)
        await sim.stop()
    told = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(told) == 1, [r.getMessage() for r in told]
    assert told[0].levelno == logging.ERROR
    assert "refused the credentials of user 'callrec' (401): fix ari.user" in told[0].getMessage()
    assert client.last_failure is not None and "401" in client.last_failure


async def test_healthz_is_503_when_the_ledger_does_not_answer(tmp_path: Path) -> None:
    """/healthz on a controller whose ledger is closed answers 503 with one line naming the
    ledger, and 200 ok while it answers."""
    store = await open_store(tmp_path / "store", POLICY, create=True)
    metrics = Metrics("fastagi")
    server = MonitorServer(
        metrics,
        ("127.0.0.1", 0),
        ledger_answers=store.audit_head,
        callbacks=lambda: callbacks_count(store),
        spool=tmp_path / "spool",
    )
    url = await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/healthz") as reply:
                assert (reply.status, await reply.text()) == (200, "ok\n")
            await store.close()
            async with session.get(url + "/healthz") as reply:
                status, text = reply.status, await reply.text()
    finally:
        await server.stop()
    assert status == 503
    assert text.startswith("the ledger does not answer") and text.count("\n") == 1
