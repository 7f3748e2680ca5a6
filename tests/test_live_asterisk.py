"""The policy's cases against a real Asterisk running asterisk-conf/ (opt-in).

Set CALLREC_TEST_ARI_URL (e.g. http://127.0.0.1:8088/ari), CALLREC_TEST_ARI_USER,
CALLREC_TEST_ARI_PASSWORD and CALLREC_TEST_SPOOL (the directory Asterisk's MixMonitor
writes to, shared with this process). Without them every test here is skipped. Prompt
expectations are not checked live: Asterisk does not report what a channel heard.
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from callrec.runner import LiveAsterisk, harness, live_capable, run_scenario
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


@pytest.mark.live
@needs_asterisk
@pytest.mark.parametrize("path", LIVE_SCENARIOS, ids=[p.stem for p in LIVE_SCENARIOS])
async def test_scenario_holds_on_a_real_asterisk(path: Path, tmp_path: Path) -> None:
    """Each scenario with live test callers holds on a real Asterisk: decisions, recordings
    with real audio or none, outcomes, links."""
    assert URL is not None
    live = LiveAsterisk(
        URL,
        os.environ.get("CALLREC_TEST_ARI_USER", "callrec"),
        os.environ.get("CALLREC_TEST_ARI_PASSWORD", ""),
    )
    spool = Path(os.environ.get("CALLREC_TEST_SPOOL", "/var/spool/asterisk/monitor/callrec"))
    policy = replace(Policy(), overload_window=timedelta(hours=3))
    async with harness(policy, tmp_path, time_scale=1.0, live=live, spool_dir=spool) as h:
        reports = await run_scenario(h, load_scenario(path))
    failed = [
        f"{c.where}: {c.what}: expected {c.expected!r}, got {c.actual!r}"
        for r in reports
        for c in r.checks
        if not c.ok
    ]
    assert not failed, "\n".join(failed)


def test_some_scenarios_can_run_live() -> None:
    """The live suite is not empty: most of the policy's cases have live test callers."""
    assert len(LIVE_SCENARIOS) >= 8
