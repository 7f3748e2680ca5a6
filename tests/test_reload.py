"""`callrec serve` reloads its lines on SIGHUP without dropping calls: a real controller
process against the simulated PBX."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from agi.simpbx import CallerScript, CallResult, SimulatedPbx
from callrec.harness import line_dids
from flows.config import policy_from_mapping
from flows.retention import delete_after
from prompts.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[1]
SCALE = 0.3  # the 15 s sales notice plays in about 5 s: time to reload while it plays

SERVICE = """
[lines.service]
policy = "consent"
numbers = ["040 40 40 40"]
prompt = "callrec-consent-question"
invalid_key_prompt = "callrec-consent-invalid"
ask_again_prompt = "callrec-consent-again"
"""
SALES = """
[lines.sales]
policy = "notice"
numbers = [{numbers}]
purposes = [{purposes}]
prompt = "callrec-sales-notice"
"""
COMPLAINTS = """
[purposes.complaints]
legal_bases = ["consent"]

[lines.complaints]
policy = "consent"
numbers = ["040 40 40 50"]
purposes = ["quality", "complaints"]
prompt = "callrec-complaints-question"
invalid_key_prompt = "callrec-consent-invalid"
ask_again_prompt = "callrec-consent-again"
queue = "complaints"
retention_months = {months}
"""
BEFORE = SERVICE + SALES.format(numbers='"040 40 40 45"', purposes='"evidence", "training"')
AFTER = (
    SERVICE
    + SALES.format(numbers='"040 40 40 45", "040 40 40 46"', purposes='"evidence"')
    + COMPLAINTS.format(months=12)
)
# The complaints notice promises 12 months: a line keeping 6 is refused at load.
BROKEN = (
    SERVICE
    + SALES.format(numbers='"040 40 40 45"', purposes='"evidence"')
    + (COMPLAINTS.format(months=6))
)


class Controller:
    """`callrec serve` as a process, its stderr collected line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            self._changed.set()

    async def said(self, text: str, *, after: int = 0, within: float = 20.0) -> int:
        """Wait until a line from `after` on contains `text`; its index."""
        async with asyncio.timeout(within):
            while True:
                for index in range(after, len(self.lines)):
                    if text in self.lines[index]:
                        return index
                self._changed.clear()
                await self._changed.wait()

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.process.wait(), 30)
        await self._reader


@contextlib.asynccontextmanager
async def controller(sim: SimulatedPbx, config: Path, data_dir: Path) -> AsyncIterator[Controller]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
    env.update(
        CALLREC_DATA_DIR=str(data_dir),
        CALLREC_ARI_URL=sim.base_url,
        CALLREC_ARI_PASSWORD=sim.password,
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callrec.cli",
        "--config",
        str(config),
        "serve",
        env=env,
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    running = Controller(process)
    try:
        await running.said("callrec serve:")
        async with asyncio.timeout(20):
            while not sim.connected():
                await asyncio.sleep(0.05)
        yield running
    finally:
        await running.stop()


async def call(sim: SimulatedPbx, dialed: str, caller: str, keys: bool) -> CallResult:
    script = CallerScript(keys=((2.0, "1"),) if keys else (), talk_seconds=2.0)
    placed = await sim.place_call(dialed, caller, script)
    return await asyncio.wait_for(placed.done, 60)


async def notice_playing(sim: SimulatedPbx, channel_id: str) -> None:
    """Until the controller asked the PBX to play the notice on the channel."""
    async with asyncio.timeout(20):
        while not any(
            channel_id in json.dumps(entry) and "/play" in json.dumps(entry) for entry in sim.log
        ):
            await asyncio.sleep(0.02)


def recordings(config: Path, data_dir: Path) -> list[dict[str, object]]:
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
    env["CALLREC_DATA_DIR"] = str(data_dir)
    command = ["recordings", "list", "--json", "--all"]
    out = subprocess.run(
        [sys.executable, "-m", "callrec.cli", "--config", str(config), *command],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    rows: list[dict[str, object]] = json.loads(out.stdout)
    return rows


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is a POSIX signal")
async def test_sighup_reloads_the_lines_without_dropping_calls(tmp_path: Path) -> None:
    """A call in progress keeps the lines it started with; calls after SIGHUP use the new
    ones (a new complaints line, a second sales number); a broken configuration is logged
    and the one in use stays."""
    config = tmp_path / "callrec.toml"
    spool = tmp_path / "spool"
    storage = f'\n[storage]\nspool_dir = "{spool}"\n'
    config.write_text(BEFORE + storage, encoding="utf-8")
    policy = policy_from_mapping({"purposes": {"complaints": {"legal_bases": ["consent"]}}} | {
        "lines": {
            "sales": {"policy": "notice", "numbers": ["040 40 40 45", "040 40 40 46"],
                      "prompt": "callrec-sales-notice"},
            "service": {"policy": "consent", "numbers": ["040 40 40 40"],
                        "prompt": "callrec-consent-question",
                        "invalid_key_prompt": "callrec-consent-invalid",
                        "ask_again_prompt": "callrec-consent-again"},
            "complaints": {"policy": "consent", "numbers": ["040 40 40 50"],
                           "purposes": ["quality", "complaints"], "queue": "complaints",
                           "prompt": "callrec-complaints-question",
                           "invalid_key_prompt": "callrec-consent-invalid",
                           "ask_again_prompt": "callrec-consent-again", "retention_months": 12},
        },
    })  # fmt: skip
    sim = SimulatedPbx(
        prompt_durations={pid: info.duration_seconds for pid, info in load_catalog().items()},
        time_scale=SCALE,
        dids=line_dids(policy),
    )
    await sim.start()
    data_dir = tmp_path / "data"
    try:
        async with controller(sim, config, data_dir) as running:
            unknown = await call(sim, "040 40 40 50", "041 555 801", keys=True)
            assert unknown.prompts_played == ()  # no line yet: on to the queue, unrecorded

            placed = await sim.place_call("040 40 40 45", "041 555 802", CallerScript())
            await notice_playing(sim, placed.channel_id)
            config.write_text(AFTER + storage, encoding="utf-8")
            running.process.send_signal(signal.SIGHUP)
            reloaded = await running.said("reloaded")
            in_progress = await asyncio.wait_for(placed.done, 60)
            assert in_progress.answered_by_agent  # the reload dropped nothing

            complaint = await call(sim, "040 40 40 50", "041 555 803", keys=True)
            assert complaint.prompts_played == ("callrec-complaints-question",)
            second_number = await call(sim, "040 40 40 46", "041 555 804", keys=False)
            assert second_number.prompts_played == ("callrec-sales-notice",)

            config.write_text(BROKEN + storage, encoding="utf-8")
            running.process.send_signal(signal.SIGHUP)
            await running.said("reload refused", after=reloaded + 1)
            kept = await call(sim, "040 40 40 50", "041 555 805", keys=True)
            assert kept.prompts_played == ("callrec-complaints-question",)
            refusal = next(line for line in running.lines if "reload refused" in line)
            assert "lines.complaints" in refusal and "callrec-complaints-question" in refusal
    finally:
        await sim.stop()
    config.write_text(AFTER + storage, encoding="utf-8")
    by_caller = {row["caller"]: row for row in recordings(config, data_dir)}
    assert "+38641555801" not in by_caller
    assert by_caller["+38641555802"]["purposes"] == ["evidence", "training"]
    assert by_caller["+38641555804"]["purposes"] == ["evidence"]
    assert by_caller["+38641555804"]["line"] == "sales"
    for caller in ("+38641555803", "+38641555805"):
        assert by_caller[caller]["line"] == "complaints"
        assert by_caller[caller]["purposes"] == ["complaints", "quality"]
        created = datetime.fromisoformat(str(by_caller[caller]["created_at"]))
        due = delete_after(created, months=12, tz="Europe/Ljubljana")
        assert datetime.fromisoformat(str(by_caller[caller]["delete_after"])) == due
