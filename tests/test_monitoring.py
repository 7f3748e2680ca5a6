"""Watching a running controller: `/metrics` and `/healthz` over real HTTP, systemd's
notifications on a real unix datagram socket, a refused ARI login and the JSON log, each
from a real `callrec serve` process against the simulated PBX."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
from cli_helpers import START_TIMEOUT, cli_env
from fakes import fastagi_pbx
from prometheus_client.parser import text_string_to_metric_families

from agi.simpbx import CallerScript, CallResult, SimulatedPbx
from prompts.catalog import load_catalog

SCALE = 0.02  # a 10 s prompt plays in 0.2 s
CALL_WAIT = 30.0  # wall seconds a whole simulated call may take
SETTLE = 30.0  # wall seconds for a state to show (files stored, sockets reconnected)
SERVICE = "040404040"
CALLER = "041123456"  # national form of +38641123456: neither may reach a log line
PRESS_1 = CallerScript(keys=((1.0, "1"),), agent_answers_after=1.0, talk_seconds=2.0)
PRESS_2 = CallerScript(keys=((1.0, "2"),), agent_answers_after=1.0, talk_seconds=2.0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class NotifySocket:
    """What systemd listens on for sd_notify: a unix datagram socket, bound by the test."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        """Datagrams received so far, each as its KEY=value fields."""
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append(fields)

    def sent(self, key: str) -> list[dict[str, str]]:
        return [m for m in self.drain() if key in m]

    def close(self) -> None:
        self.sock.close()


@dataclass
class Controller:
    """A `callrec serve` process and what it shows."""

    proc: asyncio.subprocess.Process
    log: Path
    url: str = ""
    notify: NotifySocket | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def stderr(self) -> str:
        return self.log.read_text()

    async def wait_for(self, text: str) -> str:
        """The first line of standard error that contains `text`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            for line in self.stderr().splitlines():
                if text in line:
                    return line
            assert self.proc.returncode is None, self.stderr()
            assert loop.time() < deadline, f"no {text!r} in:\n{self.stderr()}"
            await asyncio.sleep(0.05)

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as reply:
            return reply.status, await reply.text()

    async def metrics(self) -> dict[str, float]:
        """Every sample as `name{label="value",...}` -> value, labels sorted."""
        status, text = await self.get("/metrics")
        assert status == 200
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}"] = sample.value
        return samples

    async def until(self, name: str, value: float) -> dict[str, float]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE
        while True:
            samples = await self.metrics()
            if samples.get(name) == value:
                return samples
            assert loop.time() < deadline, f"{name} is {samples.get(name)}, not {value}"
            await asyncio.sleep(0.1)

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 30)


def config_for(directory: Path, ari_url: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "serve.toml"
    config.write_text(
        f'[ari]\nurl = "{ari_url}"\nuser = "callrec"\n\n[monitor]\nlisten = "127.0.0.1:0"\n'
        '\n[fastagi]\nhost = "127.0.0.1"\nport = 0\n'
    )
    return config


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path,
    ari_url: str,
    password: str,
    *args: str,
    notify: bool = False,
    env: dict[str, str] | None = None,
    command: str = "serve",
) -> AsyncIterator[Controller]:
    """`callrec [ARGS] serve` (or fastagi) on a new store, its endpoint found from its
    start-up line."""
    config = config_for(tmp_path / "etc", ari_url)
    extra = {"CALLREC_ARI_PASSWORD": password, **(env or {})}
    sock = None
    if notify:
        # A short directory: a unix socket's path has room for about 100 characters.
        sock = NotifySocket(Path(tempfile.mkdtemp(prefix="sdn", dir="/tmp")))
        extra["NOTIFY_SOCKET"] = str(sock.path)
        extra.setdefault("WATCHDOG_USEC", "400000")
    log = tmp_path / f"serve-{len(list(tmp_path.iterdir()))}.log"
    with log.open("w") as handle:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "callrec.cli",
            *args,
            command,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=handle,
            env=cli_env(tmp_path / "store", config, **extra),
            cwd=tmp_path,
        )
    controller = Controller(proc, log, notify=sock, extra=extra)
    try:
        line = await controller.wait_for("/healthz")
        found = re.search(r"(http://127\.0\.0\.1:\d+)/metrics", line)
        assert found is not None, line
        controller.url = found.group(1)
        yield controller
    finally:
        await controller.stop()
        if sock is not None:
            sock.close()
            sock.path.unlink(missing_ok=True)
            sock.path.parent.rmdir()


def simulated_pbx(password: str | None = None) -> SimulatedPbx:
    return SimulatedPbx(
        password=password,
        prompt_durations={pid: info.duration_seconds for pid, info in load_catalog().items()},
        time_scale=SCALE,
    )


@pytest.fixture
async def pbx() -> AsyncIterator[SimulatedPbx]:
    sim = simulated_pbx()
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def call(sim: SimulatedPbx, script: CallerScript) -> CallResult:
    placed = await sim.place_call(SERVICE, CALLER, script)
    return await asyncio.wait_for(placed.done, CALL_WAIT)


async def healthy(controller: Controller) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE
    while (status := await controller.get("/healthz"))[0] != 200:
        assert loop.time() < deadline, status
        await asyncio.sleep(0.05)


async def test_metrics_count_the_calls_a_controller_took(tmp_path: Path, pbx: SimulatedPbx) -> None:
    """After three callers pressed 1 and one pressed 2, /metrics says 4 calls on the
    service line, 3 record and 1 refuse decisions, 3 recordings stored, nothing waiting in
    the spool, ARI connected, REST times by resource, and no number or call id anywhere."""
    async with serving(tmp_path, pbx.base_url, pbx.password) as controller:
        await healthy(controller)
        before = await controller.metrics()
        assert before["callrec_recordings_stored_total{}"] == 0
        results = [await call(pbx, PRESS_1) for _ in range(3)] + [await call(pbx, PRESS_2)]
        assert [r.recorded_file is not None for r in results] == [True, True, True, False]
        samples = await controller.until("callrec_recordings_stored_total{}", 3)
        _, text = await controller.get("/metrics")
    calls = 'callrec_calls_total{direction="inbound",line="service",mode="ari"}'
    assert samples[calls] == 4
    assert samples['callrec_decisions_total{decision="record",legal_basis="consent"}'] == 3
    assert samples['callrec_decisions_total{decision="refuse",legal_basis="consent"}'] == 1
    assert samples["callrec_ingest_failures_total{}"] == 0
    assert samples["callrec_spool_backlog_files{}"] == 0
    assert samples["callrec_ari_connected{}"] == 1
    assert samples["callrec_calls_shed_total{}"] == 0
    assert samples["callrec_callbacks_due{}"] == 0
    assert samples["callrec_sweep_last_run_timestamp_seconds{}"] > 0  # swept at start
    # Each call was handed on once; the dialplan answered them (no answer request).
    continued = (
        'callrec_ari_request_duration_seconds_count{method="POST",'
        'resource="/channels/{channelId}/continue"}'
    )
    assert samples[continued] == 4
    assert not any("/answer" in name for name in samples)
    call_ids = {r.variables["CALLREC_CALL_ID"] for r in results}
    channel_ids = {r.channel_id for r in results}
    for secret in call_ids | channel_ids | {CALLER, CALLER[1:], "38641123456"}:
        assert secret not in text


async def test_a_missed_call_shows_as_a_callback_due(tmp_path: Path, pbx: SimulatedPbx) -> None:
    """A caller who gives up in the queue unanswered is a callback due on /metrics, not yet
    overdue."""
    async with serving(tmp_path, pbx.base_url, pbx.password) as controller:
        await healthy(controller)
        await call(pbx, CallerScript(keys=((1.0, "2"),), agent_answers_after=None))
        samples = await controller.until("callrec_callbacks_due{}", 1)
    assert samples["callrec_callbacks_overdue{}"] == 0


async def test_healthz_says_when_ari_is_gone(tmp_path: Path) -> None:
    """/healthz answers 503 with one line naming ARI while the events socket is down, 200
    `ok` once it is connected, and 503 again when Asterisk goes away."""
    sim = simulated_pbx()
    port = free_port()
    ari_url = f"http://127.0.0.1:{port}/ari"
    async with serving(tmp_path, ari_url, sim.password) as controller:
        status, text = await controller.get("/healthz")
        assert status == 503
        assert text.count("\n") == 1 and "ARI events socket not connected" in text
        await sim.start(port=port)
        try:
            await healthy(controller)
            assert await controller.get("/healthz") == (200, "ok\n")
        finally:
            await sim.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE
        while (status_text := await controller.get("/healthz"))[0] != 503:
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
        assert "ARI events socket not connected" in status_text[1]
        assert (await controller.metrics())["callrec_ari_connected{}"] == 0


async def test_systemd_hears_ready_only_once_ari_is_connected(tmp_path: Path) -> None:
    """With $NOTIFY_SOCKET set, `serve` says STATUS= while it waits for ARI, READY=1 (once)
    when the events socket is up, WATCHDOG=1 again and again, and STOPPING=1 on SIGTERM."""
    sim = simulated_pbx()
    port = free_port()
    ari_url = f"http://127.0.0.1:{port}/ari"
    async with serving(tmp_path, ari_url, sim.password, notify=True) as controller:
        notify = controller.notify
        assert notify is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE
        while not notify.sent("STATUS"):
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
        assert "waiting for ARI" in notify.sent("STATUS")[0]["STATUS"]
        assert notify.sent("READY") == []  # not while ARI is away
        await sim.start(port=port)
        try:
            deadline = loop.time() + SETTLE
            while not notify.sent("READY"):
                assert loop.time() < deadline
                await asyncio.sleep(0.05)
            [ready] = notify.sent("READY")
            assert ready["READY"] == "1" and ready["MAINPID"] == str(controller.proc.pid)
            assert ready["STATUS"].startswith("serving")
            seen = len(notify.sent("WATCHDOG"))
            deadline = loop.time() + SETTLE
            while len(notify.sent("WATCHDOG")) < seen + 3:
                assert loop.time() < deadline
                await asyncio.sleep(0.05)
            assert await controller.stop() == 0
        finally:
            await sim.stop()
        assert notify.sent("STOPPING")
        assert len(notify.sent("READY")) == 1


async def test_a_refused_ari_login_names_the_settings_once(tmp_path: Path) -> None:
    """A wrong ARI password gives one error line naming ari.user, CALLREC_ARI_PASSWORD /
    ari.password_file and Asterisk's ari.conf, no traceback, and /healthz says why."""
    sim = simulated_pbx(password="right-password")
    await sim.start()
    try:
        async with serving(tmp_path, sim.base_url, "wrong-password") as controller:
            line = await controller.wait_for("refused the credentials")
            status, text = await controller.get("/healthz")
    finally:
        await sim.stop()
    for setting in ("ari.user", "CALLREC_ARI_USER", "CALLREC_ARI_PASSWORD", "ari.password_file"):
        assert setting in line
    assert "ari.conf" in line and "ERROR" in line
    assert "Traceback" not in controller.stderr()
    assert status == 503 and "refused the credentials of user 'callrec'" in text
    assert "wrong-password" not in controller.stderr()


async def test_json_logs_are_one_object_a_line_without_numbers(
    tmp_path: Path, pbx: SimulatedPbx
) -> None:
    """`callrec --log-format json --debug serve`: every line of standard error is a JSON
    object with an ISO 8601 time with offset, level, logger and message; lines about a call
    carry its call_id; the sweep is one summary line; the caller's number appears nowhere."""
    async with serving(
        tmp_path, pbx.base_url, pbx.password, "--debug", "--log-format", "json"
    ) as controller:
        await healthy(controller)
        result = await call(pbx, PRESS_1)
        await controller.until("callrec_recordings_stored_total{}", 1)
    text = controller.stderr()
    entries = [json.loads(line) for line in text.splitlines()]
    assert len(entries) > 10
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry)
        assert datetime.fromisoformat(entry["time"]).utcoffset() is not None
    call_id = result.variables["CALLREC_CALL_ID"]
    assert any(e.get("call_id") == call_id for e in entries)
    sweeps = [e for e in entries if e["message"].startswith("retention sweep:")]
    assert sweeps and "deleted 0 recording(s), 0 failed" in sweeps[0]["message"]
    for number in (CALLER, CALLER[1:], "38641123456"):
        assert number not in text


async def test_fastagi_metrics_count_its_calls_and_it_is_healthy(tmp_path: Path) -> None:
    """`callrec fastagi` serves the same endpoint: after two consenting callers through the
    FastAGI dialplan, 2 calls in mode fastagi and 2 recordings stored; /healthz is 200 and
    there is no ARI gauge; systemd hears READY=1 once it listens."""
    async with serving(tmp_path, "http://127.0.0.1:1/ari", "", notify=True, command="fastagi") as (
        controller
    ):
        line = await controller.wait_for("listening on")
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert found is not None, line
        sim = fastagi_pbx(int(found.group(1)), time_scale=SCALE)
        await sim.start()
        try:
            results = [await call(sim, PRESS_1) for _ in range(2)]
        finally:
            await sim.stop()
        assert all(r.recorded_file is not None for r in results)
        samples = await controller.until("callrec_recordings_stored_total{}", 2)
        assert await controller.get("/healthz") == (200, "ok\n")
        assert controller.notify is not None
        [ready] = controller.notify.sent("READY")
        assert ready["STATUS"].startswith("listening on 127.0.0.1:")
    assert samples['callrec_calls_total{direction="inbound",line="service",mode="fastagi"}'] == 2
    assert "callrec_ari_connected{}" not in samples
