"""Issue 21 on a real Asterisk: a sales number and a complaints line added to callrec's
configuration alone, installed with `callrec asterisk install --reload`, route on the PBX.

Opt-in: besides the live tests' CALLREC_TEST_ARI_URL / _USER / _PASSWORD, set
CALLREC_TEST_ASTERISK_ETC to the running Asterisk's configuration directory (deployed from
asterisk-conf/, the test contexts included) and, when `asterisk` is not on PATH,
CALLREC_TEST_ASTERISK to its binary. The test installs into that directory, reloads through
the Asterisk CLI, places Local calls to the new numbers and sees each reach its queue (the
test agent, a member of every line's queue, answers, and app_queue names the queue). Every
file it changed is put back, and Asterisk reloaded, afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_asterisk_conf_live import URL, live, place_call, varset
from test_asterisk_install import LINES_TOML

ETC = os.environ.get("CALLREC_TEST_ASTERISK_ETC", "")
ASTERISK = os.environ.get("CALLREC_TEST_ASTERISK", "asterisk")
PASSWORD = os.environ.get("CALLREC_TEST_ARI_PASSWORD", "")

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not URL, reason="CALLREC_TEST_ARI_URL names no Asterisk"),
    pytest.mark.skipif(not ETC, reason="CALLREC_TEST_ASTERISK_ETC names no config directory"),
]


def run_install(config: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
    env.update(
        CALLREC_ARI_PASSWORD=PASSWORD,  # the running Asterisk's: it stays the same
        CALLREC_SIP_CUSTOMER_PASSWORD="live-customer",
        CALLREC_SIP_AGENT_PASSWORD="live-agent",
        CALLREC_DATA_DIR=str(data_dir),
    )
    return subprocess.run(
        [sys.executable, "-m", "callrec.cli", "--config", str(config), "asterisk", "install",
         "--etc", ETC, "--test-parties", "--reload", "--asterisk", ASTERISK],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


def restore(etc: Path, saved: dict[Path, bytes]) -> None:
    for path in etc.rglob("*"):
        if path.is_file() and path not in saved:
            path.unlink()
    for path, content in saved.items():
        path.write_bytes(content)
    for command in ("dialplan reload", "module reload app_queue.so", "module reload res_ari.so"):
        subprocess.run([ASTERISK, "-rx", command], capture_output=True, timeout=30, check=False)


async def test_live_a_new_number_and_line_route_after_install(tmp_path: Path) -> None:
    """After installing the configuration with a second sales number (040 40 40 46) and a
    complaints line (040 40 40 50, queue complaints) and reloading, calls to both numbers
    set their line's queue and are answered from that queue."""
    etc = Path(ETC)
    saved = {path: path.read_bytes() for path in etc.rglob("*") if path.is_file()}
    config = tmp_path / "callrec.toml"
    config.write_text(LINES_TOML, "utf-8")
    try:
        result = run_install(config, tmp_path / "data")
        assert result.returncode == 0, result.stderr
        assert "reloaded: dialplan reload" in result.stdout
        async with live(None) as (ari, observed, _):
            for did, queue in (("040404050", "complaints"), ("040404046", "sales")):
                caller = await place_call(ari, "press1", did)
                await observed.wait(varset("CALLREC_AGENT", caller))
                assert observed.varsets("CALLREC_QUEUE", caller)[-1] == queue
                queued = [
                    e.get("dialplan_app_data")
                    for e in observed.seen
                    if e["type"] == "ChannelDialplan"
                    and e.get("dialplan_app") == "Queue"
                    and e.get("channel", {}).get("id") == caller
                ]
                assert queued[-1:] == [queue]
                await ari.request("DELETE", f"/channels/{caller}")
    finally:
        restore(etc, saved)
