"""Answered or missed: what the queue's channel variables say about a call.

After `continue` the controller sees the caller's channel only through its subscription.
`Queue()` sets `BRIDGEPEER` to the agent's channel when a member answers and, when the
caller leaves, `ANSWEREDTIME` (seconds talked; `0` and `ABANDONED=TRUE` when nobody
answered), see `ari-traces/queue-agent-answers.json` and `queue-caller-gives-up-missed.json`.
Our dialplan also sets `CALLREC_AGENT` from the queue member's connect routine, for PBXes
whose queue does not report the others.

A call that ended before its decision was committed (hang-up during the prompt) is
`ABANDONED_IN_PROMPT`, not missed: its caller did not hear the whole notice, so a callback
to it is a new communication, and the callback lookup passes it over.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

AGENT_VARIABLE = "CALLREC_AGENT"


class Outcome(enum.StrEnum):
    ANSWERED = "answered"  # an agent took the call
    MISSED = "missed"  # reached the queue, nobody answered: to be called back
    ABANDONED_IN_PROMPT = "abandoned"  # gone before the decision


@dataclass(slots=True)
class QueueObserver:
    """Accumulates the channel variables of one call; `outcome` reads the verdict."""

    continued: bool = False
    answered: bool = False

    def saw_variable(self, name: str, value: str) -> None:
        if (name in ("BRIDGEPEER", AGENT_VARIABLE) and value.strip()) or (
            name == "ANSWEREDTIME" and _positive(value)
        ):
            self.answered = True

    def outcome(self) -> Outcome:
        if self.answered:
            return Outcome.ANSWERED
        return Outcome.MISSED if self.continued else Outcome.ABANDONED_IN_PROMPT


def _positive(value: str) -> bool:
    try:
        return float(value) > 0
    except ValueError:
        return False
