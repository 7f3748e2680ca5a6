"""The same caller, key for key, over ARI (the simulated PBX) and over FastAGI: both modes
must commit the same decision, with the same digit and reason, after the same prompts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest
from fakes import KeyingAsterisk, fastagi_harness

from agi.simpbx import CallerScript
from callrec.harness import harness
from flows.policy import Policy
from prompts.catalog import load_catalog

POLICY = Policy()
SCALE = 0.05  # the 37.6 s question plays in 1.9 s on the simulated PBX
SERVICE = "040 40 40 40"
CALLER = "041 555 199"
QUESTION, INVALID, AGAIN = (
    "callrec-consent-question",
    "callrec-consent-invalid",
    "callrec-consent-again",
)


@dataclass(frozen=True, slots=True)
class Outcome:
    decision: str
    digit: str | None
    reason: str | None
    prompts: tuple[str, ...]


# (keys as (seconds from the question's start, key), what the policy says must come of it).
# The question lasts 37.6 s and the wait for a key after it 5 s.
CASES = {
    "A-then-1": (
        ((2.0, "A"), (4.0, "1")),
        Outcome("record", "1", "the caller pressed 1", (QUESTION,)),
    ),
    "A-B-C-D-then-1": (
        ((2.0, "A"), (4.0, "B"), (6.0, "C"), (8.0, "D"), (10.0, "1")),
        Outcome("record", "1", "the caller pressed 1", (QUESTION,)),
    ),
    "D-then-2": (
        ((3.0, "D"), (5.0, "2")),
        Outcome("refuse", "2", "the caller pressed 2", (QUESTION,)),
    ),
    "star-then-2": (
        ((2.0, "*"), (5.0, "2")),
        Outcome("refuse", "2", "the caller pressed 2", (QUESTION, INVALID)),
    ),
    "hash-3-then-1": (
        ((2.0, "#"), (5.0, "3"), (8.0, "1")),
        Outcome("record", "1", "the caller pressed 1", (QUESTION, INVALID, INVALID)),
    ),
    "four-wrong-keys": (
        ((2.0, "3"), (5.0, "#"), (8.0, "*"), (11.0, "0")),
        Outcome("none", None, "4 keys other than 1 or 2", (QUESTION, INVALID, INVALID, INVALID)),
    ),
    "silence": (
        (),
        Outcome("none", None, "no key after 2 questions", (QUESTION, AGAIN)),
    ),
    "A-during-the-wait-then-silence": (
        ((39.5, "A"),),
        Outcome("none", None, "no key after 2 questions", (QUESTION, AGAIN)),
    ),
    "C-during-the-wait-then-2": (
        ((39.0, "C"), (40.5, "2")),
        Outcome("refuse", "2", "the caller pressed 2", (QUESTION,)),
    ),
}


async def over_ari(keys: tuple[tuple[float, str], ...], tmp_path: Path) -> Outcome:
    async with harness(POLICY, tmp_path / "ari", time_scale=SCALE) as h:
        assert h.sim is not None
        script = CallerScript(keys=keys, agent_answers_after=1.0, talk_seconds=1.0)
        placed = await h.sim.place_call(SERVICE, CALLER, script)
        result = await asyncio.wait_for(placed.done, 30.0)
        while h.app.is_live(result.channel_id):
            await asyncio.sleep(0.01)
        call_id = h.app.call_id_of(result.channel_id)
        assert call_id is not None
        row = await h.store.get_call(call_id)
    assert row is not None
    return Outcome(row.decision.value, row.digit, row.reason, result.prompts_played)


async def over_fastagi(keys: tuple[tuple[float, str], ...], tmp_path: Path) -> Outcome:
    durations = {pid: info.duration_seconds for pid, info in load_catalog().items()}
    async with fastagi_harness(tmp_path / "fastagi", POLICY) as agi:
        peer = KeyingAsterisk(agi.port, durations, keys, dialed="040404040", caller="041555199")
        call = await peer.call()
        assert call.call_id is not None
        row = await agi.store.get_call(call.call_id)
    assert row is not None
    return Outcome(row.decision.value, row.digit, row.reason, tuple(call.prompts))


@pytest.mark.parametrize(("keys", "expected"), CASES.values(), ids=CASES.keys())
async def test_a_key_sequence_means_the_same_in_both_modes(
    keys: tuple[tuple[float, str], ...], expected: Outcome, tmp_path: Path
) -> None:
    """Keys A-D are no answer in either mode, other keys say the choice again in both, and
    1 or 2 commit the same decision and digit over ARI as over FastAGI."""
    ari = await over_ari(keys, tmp_path)
    fastagi = await over_fastagi(keys, tmp_path)
    assert ari == fastagi
    assert ari == expected
