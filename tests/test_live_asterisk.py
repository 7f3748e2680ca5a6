"""The policy's cases against a real Asterisk running asterisk-conf/ (opt-in), in both
modes: ARI (the Stasis app `callrec serve` runs) and FastAGI (the server `callrec fastagi`
runs, on 127.0.0.1:4573, with CALLREC_MODE set to agi for the run).

Set CALLREC_TEST_ARI_URL (e.g. http://127.0.0.1:8088/ari), CALLREC_TEST_ARI_USER,
CALLREC_TEST_ARI_PASSWORD and CALLREC_TEST_SPOOL (the directory Asterisk's MixMonitor
writes to, shared with this process). Without them every test here is skipped. FastAGI mode
also needs Asterisk on this host. Prompt expectations are not checked live: Asterisk does
not report what a channel heard. After each scenario every stored file is hashed again
(`verify`), after Asterisk has finished with it, and none of the run's files may be left in
the spool.
"""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from callrec.harness import LIVE_FASTAGI_PORT, LiveAsterisk, harness
from callrec.runner import live_capable, run_scenario
from callrec.scenarios import load_scenario
from flows.policy import Policy

ROOT = Path(__file__).resolve().parents[1]
URL = os.environ.get("CALLREC_TEST_ARI_URL")
LIVE_SCENARIOS = [
    p for p in sorted((ROOT / "scenarios").glob("*.yaml")) if live_capable(load_scenario(p))
]

needs_asterisk = pytest.mark.skipif(
    URL is None, reason="no live Asterisk: CALLREC_TEST_ARI_URL is not set"
)


def _fastagi_possible() -> str | None:
    """Why FastAGI mode cannot run here, or None."""
    if urlsplit(URL or "").hostname not in ("127.0.0.1", "localhost", "::1"):
        return "FastAGI mode needs Asterisk on this host (agi://127.0.0.1:4573)"
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", LIVE_FASTAGI_PORT))
        except OSError as error:
            return f"port {LIVE_FASTAGI_PORT} is taken ({error.strerror})"
    return None


@pytest.mark.live
@needs_asterisk
@pytest.mark.parametrize("mode", ["ari", "agi"])
@pytest.mark.parametrize("path", LIVE_SCENARIOS, ids=[p.stem for p in LIVE_SCENARIOS])
async def test_scenario_holds_on_a_real_asterisk(path: Path, mode: str, tmp_path: Path) -> None:
    """Each scenario with live test callers holds on a real Asterisk in both modes:
    decisions, recordings with real audio or none, outcomes, links; every stored file is
    the one MixMonitor closed, and nothing of the run stays in the spool."""
    assert URL is not None
    if mode == "agi" and (why := _fastagi_possible()) is not None:
        pytest.skip(why)
    live = LiveAsterisk(
        URL,
        os.environ.get("CALLREC_TEST_ARI_USER", "callrec"),
        os.environ.get("CALLREC_TEST_ARI_PASSWORD", ""),
    )
    spool = Path(os.environ.get("CALLREC_TEST_SPOOL", "/var/spool/asterisk/monitor/callrec"))
    policy = replace(Policy(), overload_window=timedelta(hours=3))
    async with harness(
        policy, tmp_path, time_scale=1.0, live=live, spool_dir=spool, mode=mode
    ) as h:
        reports = await run_scenario(h, load_scenario(path))
        verified = await h.store.verify()
        recordings = await h.store.recordings(include_deleted=True)
        ours = set(h.calls.values()) | set(h.recent_call_ids())
    failed = [
        f"{c.where}: {c.what}: expected {c.expected!r}, got {c.actual!r}"
        for r in reports
        for c in r.checks
        if not c.ok
    ]
    assert not failed, "\n".join(failed)
    problems = [p for p in verified.problems if not p.startswith("spool:")]
    sizes = [(r.call_id[:8], r.status.value, r.size) for r in recordings]
    print(f"{path.stem} [{mode}]: recordings {sizes}; verify {problems or 'ok'}")
    assert not problems, problems  # other runs' spool files are not this test's business
    left = [p.name for p in spool.iterdir() if p.stem in ours]
    assert left == [], f"left in the spool: {left}"


def test_some_scenarios_can_run_live() -> None:
    """The live suite is not empty: most of the policy's cases have live test callers,
    callbacks of both kinds among them."""
    assert len(LIVE_SCENARIOS) >= 9
    names = {p.stem for p in LIVE_SCENARIOS}
    assert {"07-missed-with-1-callback-40min", "09-callback-after-61min"} <= names
