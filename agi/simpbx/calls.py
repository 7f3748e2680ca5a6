"""What a scripted caller does on the simulated PBX, and what became of the call.

All times are script seconds; the PBX multiplies every wait by its `time_scale`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from agi.simpbx.errors import SimulationSettingError

DTMF_DIGITS = frozenset("0123456789*#ABCD")


@dataclass(frozen=True, slots=True)
class CallerScript:
    """One party's behaviour.

    `keys`: (seconds, digit), timed from the start of the first playback on the channel, or
    from StasisStart while nothing has played. `hang_up_at`: seconds after the channel's
    dialplan started (StasisStart, as Stasis is the first priority). `agent_answers_after`:
    seconds in the queue before an agent answers (None: nobody answers); on a callback's
    customer leg, seconds of ringing before the customer picks up. `give_up_after`: seconds in
    the queue before the caller hangs up unanswered; on a callback's agent leg, seconds of
    ringing before the agent gives up. `talk_seconds`: how long the party talks once bridged
    before hanging up; an inbound call's agent hangs up after the caller's value, on a
    callback the first of the two legs to reach its value ends the conversation.
    """

    keys: tuple[tuple[float, str], ...] = ()
    hang_up_at: float | None = None
    agent_answers_after: float | None = 2.0
    give_up_after: float = 5.0
    talk_seconds: float = 3.0

    def __post_init__(self) -> None:
        for at, digit in self.keys:
            if digit not in DTMF_DIGITS or len(digit) != 1:
                raise SimulationSettingError(f"caller script: {digit!r} is not a DTMF digit")
            if at < 0:
                raise SimulationSettingError(
                    f"caller script: key {digit!r} at {at} s is before the start"
                )
        times = {
            "hang_up_at": self.hang_up_at,
            "agent_answers_after": self.agent_answers_after,
            "give_up_after": self.give_up_after,
            "talk_seconds": self.talk_seconds,
        }
        for name, value in times.items():
            if value is not None and value < 0:
                raise SimulationSettingError(f"caller script: {name} is negative ({value})")


@dataclass(frozen=True, slots=True)
class CallResult:
    channel_id: str
    stasis_status: str | None  # SUCCESS / FAILED / None (never reached Stasis)
    variables: Mapping[str, str]  # the channel's variables with a value when it was destroyed
    recorded_file: str | None  # the file MixMonitor wrote, None if it never started
    recorded_bytes: int
    answered_by_agent: bool  # bridged: with an agent, or on a callback with the other leg
    prompts_played: tuple[str, ...]  # media ids of the playbacks that started, in order
    digits_sent: tuple[str, ...]
    callee: CallResult | None = None  # callbacks: the customer's leg, when it ran the notice


@dataclass(slots=True)
class SimCall:
    channel_id: str
    done: asyncio.Future[CallResult] = field(repr=False)
