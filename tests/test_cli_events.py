"""Commands publish what they did to a real mosquitto, without a phone number in sight."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from mosquitto import Mosquitto, requires_mosquitto
from test_events_mqtt import collecting

pytestmark = [pytest.mark.mqtt, requires_mosquitto]
ROOT = Path(__file__).resolve().parents[1]


async def _run(*args: str, data_dir: Path, mqtt_url: str) -> str:
    env = {**os.environ, "CALLREC_DATA_DIR": str(data_dir), "CALLREC_MQTT_URL": mqtt_url}
    env.pop("CALLREC_CONFIG", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callrec.cli",
        *args,
        env=env,
        cwd=data_dir.parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_withdraw_and_sweep_publish_their_events(tmp_path: Path) -> None:
    """A withdrawal publishes received/deleted/completed; a sweep publishes its deletions."""
    with Mosquitto(tmp_path / "broker") as broker:
        async with collecting(broker, "callrec/#") as collector:
            store = tmp_path / "store"
            # One store for both calls (the demo gives each scenario its own).
            played = [
                str(ROOT / "scenarios" / name)
                for name in ("01-sales-call.yaml", "02-service-press-1.yaml")
            ]
            await _run(
                "replay", "--json", "--scale", "0.02", *played, data_dir=store, mqtt_url=broker.url
            )
            await _run(
                "withdraw",
                "--caller",
                "041 555 102",
                "--via",
                "email",
                "--by",
                "dpo",
                "--now",
                "2026-03-05T10:00:00+01:00",
                data_dir=store,
                mqtt_url=broker.url,
            )
            await _run(
                "sweep", "--now", "2030-01-01T00:00:00+00:00", data_dir=store, mqtt_url=broker.url
            )
            bodies = await collector.wait_for(4)
            await asyncio.sleep(0.5)
            bodies = [collector.body(m) for m in collector.distinct]
    kinds = [b["kind"] for b in bodies]
    assert kinds[:3] == ["withdrawal/received", "recording/deleted", "withdrawal/completed"]
    assert bodies[1]["reason"] == "withdrawal"
    assert "sweep/finished" in kinds
    assert any(b["kind"] == "recording/deleted" and b["reason"] == "retention" for b in bodies)
    for body in bodies:
        text = json.dumps(body)
        assert "41555102" not in text and "+386" not in text
