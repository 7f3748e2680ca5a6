"""Hostile input never becomes a path, SQL or dialplan, and never records by accident."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agi.simpbx import CallerScript
from callrec.harness import harness
from flows.config import policy_from_mapping
from flows.errors import ConfigError
from flows.policy import Policy
from storage.ports import RecordingStatus

POLICY = replace(Policy(), overload_window=timedelta(hours=3))
HOSTILE_CALLERS = [
    "../../../../etc/passwd",
    "'; DROP TABLE calls; --",
    '"Ana" <041123456>',
    "${SHELL(rm -rf /)}",
    "$[1+1]",
    "041\x00123456",
    "9" * 10_000,
    "+38641123456,b,W(x)",
]


async def test_hostile_caller_ids_are_recorded_safely(tmp_path: Path) -> None:
    """Caller IDs built to escape paths or inject SQL/dialplan: each consented call is
    recorded under a file named by our call id, and the caller is stored as anonymous."""
    async with harness(POLICY, tmp_path, time_scale=0.02) as h:
        script = CallerScript(keys=((2.0, "1"),), agent_answers_after=1.0, talk_seconds=2.0)
        placed = [await h.sim.place_call("040404040", caller, script) for caller in HOSTILE_CALLERS]
        results = await asyncio.wait_for(asyncio.gather(*(p.done for p in placed)), 60)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while any(h.stasis.is_live(r.channel_id) for r in results):
            assert loop.time() < deadline
            await asyncio.sleep(0.02)
        rows = await h.store.recordings()
    assert len(rows) == len(HOSTILE_CALLERS)
    for result in results:
        file = result.variables["CALLREC_FILE"]
        assert Path(file).parent == tmp_path / "spool"
        assert Path(file).name == f"{result.variables['CALLREC_CALL_ID']}.wav"
    for row in rows:
        assert row.status is RecordingStatus.STORED
        assert row.path is not None and Path(row.path).resolve().is_relative_to(tmp_path)
        assert row.caller in (None, "+38641123456")
    assert (tmp_path / "ledger.sqlite3").exists()


async def test_an_unusable_callback_number_never_reaches_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An agent dials a number that is no phone number: the call goes on unrecorded and the
    log line that says so shows the number masked, not its digits."""
    number = "000041555101"  # "00" then a country code starting with 0: unusable
    caplog.set_level(logging.INFO)
    async with harness(POLICY, tmp_path / "store", time_scale=0.02) as h:
        assert h.sim is not None
        script = CallerScript(agent_answers_after=None, give_up_after=1.0)
        placed = await h.sim.place_callback(
            number, "service", agent_script=script, customer_script=script
        )
        await asyncio.wait_for(placed.done, 30)
    rejected = [r.getMessage() for r in caplog.records if "unrecorded" in r.getMessage()]
    assert any("callback number" in line for line in rejected), caplog.text
    assert "41555101" not in caplog.text
    assert "0000415551" not in caplog.text


VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.floats(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
SECTIONS = st.sampled_from(["policy", "consent", "callbacks", "lines"])
KEYS = st.sampled_from(
    [
        "retention_months",
        "timezone",
        "numbers",
        "policy",
        "prompt",
        "window_minutes",
        "default_line",
        "digit_timeout_seconds",
        "sales",
        "service",
        "purposes",
        "receipt_cutoff",
        "x",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(SECTIONS, st.dictionaries(KEYS, VALUES, max_size=4), max_size=4))
def test_config_loading_only_ever_raises_config_error(data: dict[str, Any]) -> None:
    """Any parsed TOML-like structure gives a Policy or one ConfigError, never a crash."""
    try:
        policy_from_mapping(data)
    except ConfigError as error:
        assert str(error)
