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

A decision to record is carried out by the dialplan after the call left the controller
(MixMonitor, before the queue), so a caller can leave in between: `unrecorded_reason` says
why such a decision ended with no recording, once the call ended and its file settled.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from flows.policy import Decision, Direction

AGENT_VARIABLE = "CALLREC_AGENT"
MEMBER_VARIABLE = "MEMBERINTERFACE"  # Queue()'s setinterfacevar: the member that answered
PEER_VARIABLE = "BRIDGEPEER"
# Which variable names the agent best: ours (the member's interface, or its channel), then
# the queue's member interface, then the bridged channel's name (a channel, not a person).
_AGENT_SOURCES = (AGENT_VARIABLE, MEMBER_VARIABLE, PEER_VARIABLE)
ANSWERED_TIME_VARIABLE = "ANSWEREDTIME"
ABANDONED_VARIABLE = "ABANDONED"  # TRUE when the caller gave up waiting in the queue
# Every variable `QueueObserver.saw_variable` reads; an adapter may skip the others unread.
QUEUE_VARIABLES = frozenset({*_AGENT_SOURCES, ANSWERED_TIME_VARIABLE, ABANDONED_VARIABLE})
MAX_AGENT = 80  # an interface or channel name; anything longer is not one


class Outcome(enum.StrEnum):
    ANSWERED = "answered"  # an agent took the call
    MISSED = "missed"  # reached the queue, nobody answered: to be called back
    ABANDONED_IN_PROMPT = "abandoned"  # gone before the decision


@dataclass(slots=True)
class QueueObserver:
    """Accumulates the channel variables of one call; `outcome` reads the verdict."""

    continued: bool = False
    answered: bool = False
    # The agent as each variable named it; kept when the queue clears BRIDGEPEER after the
    # talk, so the end of the call still knows who took it.
    agents: dict[str, str] = field(default_factory=dict)
    # The leg's queue (or Dial) said how it ended: ANSWEREDTIME or ABANDONED was set. A leg
    # with neither (a callback's customer leg has no queue) is judged by its recording.
    settled: bool = False

    def saw_variable(self, name: str, value: str) -> None:
        if name in (ANSWERED_TIME_VARIABLE, ABANDONED_VARIABLE) and value.strip():
            self.settled = True
        if (name in (PEER_VARIABLE, AGENT_VARIABLE) and value.strip()) or (
            name == ANSWERED_TIME_VARIABLE and _positive(value)
        ):
            self.answered = True
        if name in _AGENT_SOURCES and (agent := agent_name(value)) is not None:
            self.agents[name] = agent

    def agent(self, direction: Direction = Direction.INBOUND) -> str | None:
        """Who took the call, as Asterisk named them; None when no agent was seen. On an
        agent's own callback leg the bridged channel is the customer's, never an agent."""
        sources = _AGENT_SOURCES if direction is not Direction.CALLBACK else _AGENT_SOURCES[:2]
        return next((self.agents[n] for n in sources if n in self.agents), None)

    def needs_audio(self, *, reports_lost: bool = False) -> bool:
        """Whether the recording's audio has something to add: nothing said the leg was
        answered, and either nothing said how its queue ended or what did may have been
        lost (`reports_lost`: the events connection dropped while the call was on)."""
        return not self.answered and (reports_lost or not self.settled)

    def saw_recorded_audio(self, beyond_header: bool) -> None:
        """MixMonitor(...,b) wrote audio beyond the WAV header: it saw a bridge, so an agent
        took the call (the queue's variables may have been lost with the connection)."""
        if beyond_header:
            self.answered = True

    def outcome(self) -> Outcome:
        if self.answered:
            return Outcome.ANSWERED
        return Outcome.MISSED if self.continued else Outcome.ABANDONED_IN_PROMPT


def hangup_report(
    *, decided: bool, answered_time: str, abandoned: str, agent: str
) -> QueueObserver:
    """What a dialplan hangup handler reports (FastAGI `/hangup`), read as the queue left
    it: a call is still open there only if it went on, i.e. if its decision was committed.
    `needs_audio()` says whether its recording must settle it."""
    observer = QueueObserver(continued=decided)
    observer.saw_variable(ANSWERED_TIME_VARIABLE, answered_time)
    observer.saw_variable(ABANDONED_VARIABLE, abandoned)
    observer.saw_variable(AGENT_VARIABLE, agent)
    return observer


def agent_name(value: str) -> str | None:
    """An agent's interface or channel name as the ledger keeps it: printable, short, or
    None (empty, or not a name at all)."""
    text = value.strip()
    if not text or len(text) > MAX_AGENT or not text.isprintable():
        return None
    return text


def outcome_after_restart(*, decided: bool, recorded_audio: bool) -> Outcome:
    """Best judgement for a call that ended while nobody watched: audio beyond the WAV
    header means an agent was bridged; otherwise a decided call reached the queue unanswered
    (missed, so that it is called back rather than forgotten), an undecided one was
    abandoned in the prompt."""
    observer = QueueObserver(continued=decided)
    observer.saw_recorded_audio(recorded_audio)
    return observer.outcome()


LEFT_BEFORE_RECORDING = "caller left before recording started"
NO_FILE_THOUGH_ANSWERED = "no recording file was written though an agent took the call"


def unrecorded_reason(
    *, decision: Decision, outcome: Outcome | None, file_written: bool
) -> str | None:
    """Why an ended call's decision to record has no recording, or None when nothing is
    owed (not a "record" decision, not ended, or MixMonitor wrote a file). MixMonitor creates
    its file as it starts, so no file means it never ran: the caller left between the
    decision and the dialplan's MixMonitor, or, if an agent still took the call, the
    dialplan did not start it."""
    if decision is not Decision.RECORD or outcome is None or file_written:
        return None
    if outcome is Outcome.ANSWERED:
        return NO_FILE_THOUGH_ANSWERED
    return LEFT_BEFORE_RECORDING


def _positive(value: str) -> bool:
    try:
        return float(value) > 0
    except ValueError:
        return False
