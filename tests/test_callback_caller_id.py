"""A callback shows the caller ID of its own line: the controller sets CALLREC_CALLBACK_CID
on the agent's channel (ARI and FastAGI alike), in the form `[asterisk] caller_id_form` names,
before the dialplan dials the customer."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from fakes import fastagi_harness, fastagi_pbx

from agi.simpbx import CallerScript, CallResult
from callrec.harness import harness
from flows.policy import Policy

SCALE = 0.02
WAIT = 20.0
CUSTOMER = "041555109"
AGENT = CallerScript(talk_seconds=2)
CUSTOMER_PRESSES_1 = CallerScript(keys=((1.0, "1"),), agent_answers_after=1.0, talk_seconds=2)
# The sales line's callbacks show its own number, not the service line's.
POLICY = replace(
    Policy(),
    lines=(
        replace(Policy().lines[0], callback_caller_id="+38640404046"),
        *Policy().lines[1:],
    ),
)


async def over_ari(line: str, tmp_path: Path) -> CallResult:
    async with harness(POLICY, tmp_path, time_scale=SCALE) as h:
        assert h.sim is not None
        placed = await h.sim.place_callback(
            CUSTOMER, line, agent_script=AGENT, customer_script=CUSTOMER_PRESSES_1
        )
        return await asyncio.wait_for(placed.done, WAIT)


async def over_fastagi(line: str, tmp_path: Path, form: str = "national") -> CallResult:
    async with fastagi_harness(tmp_path, POLICY, prompt_timeout=30.0, caller_id_form=form) as agi:
        sim = fastagi_pbx(agi.port, time_scale=SCALE)
        await sim.start()
        try:
            placed = await sim.place_callback(
                CUSTOMER, line, agent_script=AGENT, customer_script=CUSTOMER_PRESSES_1
            )
            return await asyncio.wait_for(placed.done, WAIT)
        finally:
            await sim.stop()


@pytest.mark.parametrize(("line", "shown"), [("sales", "040404046"), ("service", "040404040")])
async def test_callback_shows_its_lines_caller_id_over_ari(
    line: str, shown: str, tmp_path: Path
) -> None:
    """In ARI mode the Stasis app sets CALLREC_CALLBACK_CID to the callback's line's caller
    ID (a sales callback never shows the service number)."""
    result = await over_ari(line, tmp_path)
    assert result.variables.get("CALLREC_CALLBACK_CID") == shown


@pytest.mark.parametrize(("line", "shown"), [("sales", "040404046"), ("service", "040404040")])
async def test_callback_shows_its_lines_caller_id_over_fastagi(
    line: str, shown: str, tmp_path: Path
) -> None:
    """In FastAGI mode the server sets the same variable with SET VARIABLE."""
    result = await over_fastagi(line, tmp_path)
    assert result.variables.get("CALLREC_CALLBACK_CID") == shown


async def test_callback_caller_id_in_e164_when_configured(tmp_path: Path) -> None:
    """With caller_id_form = "e164" the caller ID is written +386..., for trunks that want
    it so."""
    result = await over_fastagi("sales", tmp_path, form="e164")
    assert result.variables.get("CALLREC_CALLBACK_CID") == "+38640404046"
