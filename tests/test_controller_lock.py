"""The heartbeat of a controller's id on a PostgreSQL ledger: a lock lost with its session is
taken again, calls going on meanwhile; taken by another controller meanwhile, the first one
stops, and its restart is refused naming the holder."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pg_server
import psycopg
import pytest
from cli_helpers import callrec, fastagi_config, start_fastagi
from storage_helpers import POLICY
from test_cli_input import one_line_error
from test_cli_postgres import _without_password

from callrec.controller import _keep_claim
from callrec.metrics import Metrics
from flows.errors import ControllerConflict
from storage.factory import open_ledger
from storage.ledgers import LedgerConfig
from storage.records import ClaimState
from storage.store import Store

CHECK = 0.5  # storage.lock_check_seconds of these tests' controllers
_KEY = "SELECT hashtextextended('callrec controller ' || current_schema() || ' ' || %s, 0)"
_HOLDERS = (
    "SELECT l.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a "
    "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid"
)


def _holder(url: str, controller_id: str) -> tuple[int, str] | None:
    """(server pid, application name) of the session holding `controller_id`'s lock."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(_KEY, (controller_id,)).fetchone()
        assert row is not None
        key = int(row[0])
        found = conn.execute(_HOLDERS, ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)).fetchone()
    return None if found is None else (int(found[0]), str(found[1]))


def _terminate(url: str, pid: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _until(what: str, check: Callable[[], object], timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


def _start(tmp_path: Path, name: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    config = fastagi_config(tmp_path / "etc", f"[storage]\nlock_check_seconds = {CHECK}\n")
    proc = start_fastagi(tmp_path, name, tmp_path / "data", config, env)
    return proc, tmp_path / f"{name}.log"


def _metrics(log: Path) -> str:
    match = re.search(r"callrec monitor: (http://\S+)/metrics", log.read_text())
    assert match is not None, log.read_text()
    with urllib.request.urlopen(f"{match.group(1)}/metrics", timeout=10) as response:
        return str(response.read().decode())


@contextlib.contextmanager
def _node_env(pg_database: str) -> Iterator[tuple[str, dict[str, str]]]:
    with pg_server.schema(pg_database) as url:
        bare, password = _without_password(url)
        yield (
            url,
            {
                "CALLREC_LEDGER_URL": bare,
                "CALLREC_LEDGER_PASSWORD": password,
                "CALLREC_CONTROLLER_ID": "node-a",
                "CALLREC_MONITOR_LISTEN": "127.0.0.1:0",
            },
        )


def test_a_controller_takes_its_lock_again_when_its_session_is_ended(
    tmp_path: Path, pg_database: str
) -> None:
    """`pg_terminate_backend` on the session holding `callrec fastagi`'s controller id: the
    controller goes on serving, holds the id again on a new session within a few checks,
    logs it, and counts the loss in /metrics."""
    with _node_env(pg_database) as (url, env):
        callrec("init", data_dir=tmp_path / "data", env=env)
        proc, log = _start(tmp_path, "node-a", env)
        try:
            first = _holder(url, "node-a")
            assert first is not None and f"callrec pid {proc.pid} " in first[1]
            _terminate(url, first[0])
            again = _until(
                "the lock taken again",
                lambda: (h := _holder(url, "node-a")) is not None and h[0] != first[0] and h,
            )
            assert isinstance(again, tuple) and f"callrec pid {proc.pid} " in again[1]
            _until("the log line", lambda: "held again" in log.read_text())
            assert proc.poll() is None
            page = _metrics(log)
            assert "callrec_controller_lock_lost_total 1.0" in page
            assert "callrec_controller_lock_held 1.0" in page
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()


def test_a_controller_whose_id_was_taken_meanwhile_stops(tmp_path: Path, pg_database: str) -> None:
    """When the lock session of controller `node-a` ends and another session takes the id
    before it can, `callrec fastagi` logs a critical line naming the holder and exits 2;
    started again, it is refused with one line naming that holder."""
    with _node_env(pg_database) as (url, env):
        callrec("init", data_dir=tmp_path / "data", env=env)
        proc, log = _start(tmp_path, "node-a", env)
        try:
            with psycopg.connect(url, autocommit=True, application_name="rival on node-x") as rival:
                key = rival.execute(_KEY, ("node-a",)).fetchone()
                assert key is not None
                holder = _holder(url, "node-a")
                assert holder is not None
                _terminate(url, holder[0])
                _until(
                    "the rival holding the id",
                    lambda: (
                        rival.execute("SELECT pg_try_advisory_lock(%s)", key).fetchone() == (True,)
                    ),
                    timeout=10,
                )
                assert proc.wait(timeout=30) == 2
                text = log.read_text()
                assert "CRITICAL callrec: stopping: another controller with the id node-a" in text
                assert "rival on node-x" in text.splitlines()[-1]
                again = callrec(
                    "fastagi",
                    data_dir=tmp_path / "data",
                    config=tmp_path / "etc" / "fastagi.toml",
                    env=env,
                    check=False,
                    timeout=60,
                )
                line = one_line_error(again)
                assert "another controller with the id node-a" in line
                assert "rival on node-x" in line
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


class _Proxy:
    """A TCP relay to the PostgreSQL server: `cut` is the network gone (every connection
    dropped, new ones refused), `mend` brings it back on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


async def test_a_controller_cut_off_from_its_ledger_keeps_retrying_and_takes_its_lock_again(
    tmp_path: Path, pg_database: str
) -> None:
    """While the ledger cannot be reached, the heartbeat counts the lock lost once, keeps
    the controller running and tries again at every beat; once the ledger answers again
    the lock is held again on a new session."""
    with pg_server.schema(pg_database) as url:
        parts = psycopg.conninfo.conninfo_to_dict(url)
        proxy = _Proxy(str(parts.get("host", "127.0.0.1")), int(parts.get("port", 5432)))
        await proxy.start()
        through = url.replace(f":{parts.get('port', 5432)}/", f":{proxy.port}/", 1)
        if through == url:
            pytest.skip("the test server's URL names no port to relay")
        metrics = Metrics("fastagi")
        ledger = LedgerConfig(url=through)
        store, first = await _node_a(tmp_path, ledger, url)
        try:
            beat = asyncio.create_task(_keep_claim(store, 0.2, metrics))
            await proxy.cut()
            await _wait_for(lambda: _sample(metrics, "callrec_controller_lock_held") == 0)
            await asyncio.sleep(1.0)  # several beats, each failing to reach the ledger
            assert not beat.done()
            assert _sample(metrics, "callrec_controller_lock_lost_total") == 1
            await _wait_for(lambda: _holder(url, "node-a") is None)  # the server saw it end
            await proxy.start()
            await _wait_for(lambda: _sample(metrics, "callrec_controller_lock_held") == 1)
            again = _holder(url, "node-a")
            assert again is not None and again[0] != first[0]
            assert _sample(metrics, "callrec_controller_lock_lost_total") == 1 and not beat.done()
            beat.cancel()
        finally:
            await store.close()
            await proxy.cut()


async def _node_a(tmp_path: Path, ledger: LedgerConfig, url: str) -> tuple[Store, tuple[int, str]]:
    """Controller `node-a`'s store with its id claimed, and the session holding the lock."""
    store = await open_ledger(
        tmp_path / "data", POLICY, ledger, create=True, controller_id="node-a"
    )
    try:
        await store.claim_controller()
        holder = _holder(url, "node-a")
        assert holder is not None
    except BaseException:
        await store.close()
        raise
    return store, holder


async def _wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


async def test_a_rival_that_held_the_id_between_two_checks_stops_the_controller(
    tmp_path: Path, pg_database: str
) -> None:
    """When controller `node-a`'s lock session ends and another controller with that id
    starts and stops before node-a's next check, that check takes the lock again but raises
    `ControllerConflict` naming the rival's claim, and node-a no longer holds the id."""
    with pg_server.schema(pg_database) as url:
        ledger = LedgerConfig(url=url)
        store, first = await _node_a(tmp_path, ledger, url)
        try:
            assert (await store.keep_claim()).state is ClaimState.HELD
            _terminate(url, first[0])
            await _wait_for(lambda: _holder(url, "node-a") is None)
            rival = await open_ledger(tmp_path / "data", POLICY, ledger, controller_id="node-a")
            try:
                await rival.claim_controller()
                assert _holder(url, "node-a") is not None
            finally:
                await rival.close()
            await _wait_for(lambda: _holder(url, "node-a") is None)

            with pytest.raises(ControllerConflict) as caught:
                await store.keep_claim()

            assert "another controller with the id node-a" in str(caught.value)
            assert "held this PostgreSQL ledger while" in str(caught.value)
            assert _holder(url, "node-a") is None
        finally:
            await store.close()


async def test_a_controller_that_lost_its_lock_to_nobody_takes_it_again_more_than_once(
    tmp_path: Path, pg_database: str
) -> None:
    """A lock session ended twice with no rival in between is taken again both times, each
    check saying so, and the id stays held by this controller."""
    with pg_server.schema(pg_database) as url:
        store = await open_ledger(
            tmp_path / "data", POLICY, LedgerConfig(url=url), create=True, controller_id="node-a"
        )
        try:
            await store.claim_controller()
            for _ in range(2):
                holder = _holder(url, "node-a")
                assert holder is not None
                _terminate(url, holder[0])
                await _wait_for(lambda: _holder(url, "node-a") is None)
                assert (await store.keep_claim()).state is ClaimState.RETAKEN
                assert (await store.keep_claim()).state is ClaimState.HELD
            assert _holder(url, "node-a") is not None
        finally:
            await store.close()
