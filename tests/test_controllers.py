"""Controllers and their calls: each call belongs to the controller that started it, a
restart settles only its own, and on SQLite a second controller is refused outright."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import START_TIMEOUT, callrec, cli_env, fastagi_config
from storage_helpers import POLICY, T0, alice_calls, new_id, open_store, record_call
from test_cli_input import one_line_error

from flows.outcome import Outcome
from storage.datadir import default_controller_id
from storage.ports import StoreApi


async def _undecided_call(store: StoreApi) -> str:
    """A call that has heard the notice and not answered yet (no decision committed)."""
    call_id = new_id()
    await store.start_call(alice_calls(call_id, f"chan-{call_id[:8]}"))
    return call_id


@pytest.mark.usefixtures("ledger")
async def test_a_restart_settles_only_its_own_calls(tmp_path: Path) -> None:
    """Reconciling at start fails closed the undecided calls of its own controller and
    leaves another controller's live call (and its open-call list) alone."""
    data = tmp_path / "store"
    spool_a, spool_b = tmp_path / "spool-a", tmp_path / "spool-b"
    spool_a.mkdir()
    spool_b.mkdir()
    a = await open_store(data, POLICY, create=True, controller_id="node-a")
    b = await open_store(data, POLICY, controller_id="node-b")
    try:
        live = await _undecided_call(a)
        recorded, _ = await record_call(a, spool_a, end=False)
        report = await b.reconcile(spool_b, T0)
        assert live not in report.failed_closed
        call = await b.get_call(live)
        assert call is not None and call.ended_at is None
        assert await b.open_calls() == []
        assert [c.call_id for c in await a.open_calls()] == sorted(
            [live, recorded], key=lambda i: (T0, i)
        )
        report = await a.reconcile(spool_a, T0)
        assert report.failed_closed == (live,)
        call = await a.get_call(live)
        assert call is not None and call.outcome is Outcome.ABANDONED_IN_PROMPT
        still = await a.get_call(recorded)
        assert still is not None and still.ended_at is None  # decided: it goes on
    finally:
        await b.close()
        await a.close()


@pytest.mark.usefixtures("ledger")
async def test_calls_belong_to_a_stable_default_controller(tmp_path: Path) -> None:
    """Without a configured id, every open of one data directory on one host is the same
    controller, so a restart finds the calls it started before."""
    data = tmp_path / "store"
    store = await open_store(data, POLICY, create=True)
    try:
        call_id = await _undecided_call(store)
    finally:
        await store.close()
    again = await open_store(data, POLICY)
    try:
        call = await again.get_call(call_id)
        assert call is not None
        assert call.controller_id == default_controller_id(data.absolute())
        assert [c.call_id for c in await again.open_calls()] == [call_id]
    finally:
        await again.close()


def test_a_second_controller_on_one_data_directory_is_refused(tmp_path: Path) -> None:
    """While `callrec fastagi` serves a SQLite store, a second controller on it exits 2 with
    one line saying another controller holds it; read-only commands still run; once the
    first is killed (kill -9) a new controller starts."""
    data = tmp_path / "store"
    config = fastagi_config(tmp_path / "etc")
    log = tmp_path / "first.log"
    with log.open("w") as handle:
        first = subprocess.Popen(
            [sys.executable, "-m", "callrec.cli", "fastagi"],
            stdout=subprocess.DEVNULL,
            stderr=handle,
            env=cli_env(data, config),
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "listening on" not in log.read_text():
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        second = callrec("fastagi", data_dir=data, config=config, check=False, timeout=60)
        line = one_line_error(second)
        assert "another controller" in line and str(data) in line
        assert f"pid {first.pid}" in line
        assert first.poll() is None  # the first one goes on
        assert callrec("recordings", "list", "--json", data_dir=data).returncode == 0
        assert callrec("sweep", data_dir=data).returncode == 0
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    third_log = tmp_path / "third.log"
    with third_log.open("w") as handle:
        third = subprocess.Popen(
            [sys.executable, "-m", "callrec.cli", "fastagi"],
            stdout=subprocess.DEVNULL,
            stderr=handle,
            env=cli_env(data, config),
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "listening on" not in third_log.read_text():
            assert third.poll() is None and time.monotonic() < deadline, third_log.read_text()
            time.sleep(0.05)
    finally:
        third.send_signal(signal.SIGTERM)
        assert third.wait(timeout=30) == 0


def test_a_malformed_controller_id_is_refused(tmp_path: Path) -> None:
    """A configured controller id that could not be told apart in the ledger (spaces,
    control characters, too long) is refused with one line naming the setting."""
    data = tmp_path / "store"
    callrec("init", data_dir=data)
    config = tmp_path / "bad.toml"
    config.write_text('[storage]\ncontroller_id = "node a"\n')
    line = one_line_error(callrec("recordings", "list", data_dir=data, config=config, check=False))
    assert "storage.controller_id" in line
    env = {"CALLREC_CONTROLLER_ID": "x" * 65}
    line = one_line_error(callrec("recordings", "list", data_dir=data, env=env, check=False))
    assert "storage.controller_id" in line
