"""The policy's cases end to end: real loopback HTTP/WebSocket, a real SQLite ledger, real
files. Each scenario file of scenarios/ runs through the same controller `callrec serve`
runs, against the simulated PBX."""

from __future__ import annotations

import wave
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from callrec.harness import harness
from callrec.runner import run_scenario
from callrec.scenarios import load_scenario
from flows.errors import ConfigError
from flows.policy import Policy
from storage.ports import RecordingStatus

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))
POLICY = replace(Policy(), overload_window=timedelta(hours=3))
SCALE = 0.02  # a 30 s prompt plays in 0.6 s


@pytest.mark.parametrize("mode", ["ari", "agi"])
@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
async def test_scenario_expectations_hold(path: Path, mode: str, tmp_path: Path) -> None:
    """Every expectation of the scenario holds in both modes (the Stasis app and the FastAGI
    server): decisions, recordings, links, deletions; and every stored file is the one
    MixMonitor closed, nothing left in the spool."""
    scenario = load_scenario(path)
    async with harness(POLICY, tmp_path, time_scale=SCALE, mode=mode) as h:
        reports = await run_scenario(h, scenario)
        verified = await h.store.verify()
    assert verified.ok, verified.problems
    assert not any((tmp_path / "spool").iterdir()), "a file was left in the spool"
    checks = [c for r in reports for c in r.checks]
    assert checks, "a scenario without expectations proves nothing"
    failed = [
        f"{c.where}: {c.what}: expected {c.expected!r}, got {c.actual!r}"
        for c in checks
        if not c.ok
    ]
    assert not failed, "\n".join(failed)


async def test_recorded_call_is_real_audio_in_the_store(tmp_path: Path) -> None:
    """A consented call leaves a real 8 kHz WAV in the store, hashed, 0600, outside the spool."""
    scenario = load_scenario(ROOT / "scenarios" / "02-service-press-1.yaml")
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        await run_scenario(h, scenario)
        rows = await h.store.recordings()
    assert len(rows) == 1
    row = rows[0]
    assert row.status is RecordingStatus.STORED and row.path is not None
    path = Path(row.path)
    assert path.is_relative_to(tmp_path) and "spool" not in path.parts
    assert path.stat().st_mode & 0o777 == 0o600
    with wave.open(str(path)) as audio:
        assert (audio.getframerate(), audio.getnchannels(), audio.getsampwidth()) == (8000, 1, 2)
        assert audio.getnframes() > 8000  # seconds of conversation, not a bare header
    assert row.caller == "+38641555102" and row.dialed == "+38640404040"
    assert not any((tmp_path / "spool").iterdir()), "the spool keeps no copy"


async def test_refused_call_leaves_no_file_anywhere(tmp_path: Path) -> None:
    """After 2, MixMonitor never runs: no file in the spool, none in the store."""
    scenario = load_scenario(ROOT / "scenarios" / "03-service-press-2.yaml")
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        await run_scenario(h, scenario)
        assert await h.store.recordings(include_deleted=True) == []
    wavs = list(tmp_path.rglob("*.wav"))
    assert wavs == []


@pytest.mark.parametrize("name", ["yes", "no", "on", "1"])
def test_a_call_name_yaml_reads_as_no_text_is_refused(name: str, tmp_path: Path) -> None:
    """`name: yes` is a boolean in YAML 1.1: the loader says so instead of printing True."""
    path = tmp_path / "bare.yaml"
    path.write_text(
        f'steps:\n  - call: {{name: {name}, dialed: "040 40 40 45", caller: "041 555 1"}}\n'
    )
    with pytest.raises(ConfigError, match="is not text; quote it"):
        load_scenario(path)


def test_every_call_name_in_the_scenarios_is_text() -> None:
    """The shipped scenarios load, each call named by text."""
    for path in SCENARIOS:
        for step in load_scenario(path).steps:
            assert isinstance(step.args.get("name", ""), str), step.where
