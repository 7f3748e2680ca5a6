"""Commands: what a flow asks its adapter to do, in order. Frozen, comparable."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from flows.policy import Decision, LegalBasis
from flows.retention import Keeping


@dataclass(frozen=True, slots=True)
class Answer:
    pass


@dataclass(frozen=True, slots=True)
class PlayPrompt:
    """Play a prompt; `barge_in` means a key pressed while it plays counts. Its end is
    reported as `PromptFinished(token)`; a playback stopped by `StopPrompt` may still
    report, and the stale token tells the flow to ignore it."""

    prompt: str
    barge_in: bool
    token: int


@dataclass(frozen=True, slots=True)
class StopPrompt:
    """Stop the playback of `token` (barge-in)."""

    token: int


@dataclass(frozen=True, slots=True)
class WaitForDigit:
    """Answer with `DigitPressed`, or `DigitTimedOut(token)` after `timeout`."""

    timeout: timedelta
    token: int


@dataclass(frozen=True, slots=True)
class CancelWait:
    token: int


@dataclass(frozen=True, slots=True)
class LookUpPriorCall:
    """Find the missed call this callback answers (`flows.communication.look_up_answer`):
    one of the customer's under `legal_basis` that ended at or after `since`; answer with
    `PriorCallFound` or `NoPriorCall`."""

    window: timedelta
    overload: bool
    since: datetime
    legal_basis: LegalBasis


@dataclass(frozen=True, slots=True)
class CommitDecision:
    """Write the decision to the ledger; answer with `DecisionCommitted` or `CommitFailed`.

    Always precedes `StartRecording`: nothing is recorded without a committed decision.
    """

    decision: Decision
    legal_basis: LegalBasis
    digit: str | None
    reason: str
    prompt: str | None  # the prompt the decision was given to (None: none was played)
    decided_at: datetime
    # The conversation's line and what it decides (deletion date, purposes): fixed here, once.
    keep: Keeping
    linked_to: str | None = None  # the missed call a callback answers
    window: timedelta | None = None  # the callback window used to find it
    overload: bool = False


@dataclass(frozen=True, slots=True)
class StartRecording:
    """Record the call (ARI: CALLREC_RECORD=yes and a file; AGI: MixMonitor)."""


@dataclass(frozen=True, slots=True)
class SkipRecording:
    reason: str


@dataclass(frozen=True, slots=True)
class NoticeCallee:
    """This callback is a new communication: the customer's leg must hear the line's notice
    (and, on a consent line, answer the question) before the agent is connected."""

    line: str


@dataclass(frozen=True, slots=True)
class Continue:
    """Hand the channel back to the dialplan (on to the queue or the dialled customer)."""


@dataclass(frozen=True, slots=True)
class Hangup:
    pass


Command = (
    Answer
    | PlayPrompt
    | StopPrompt
    | WaitForDigit
    | CancelWait
    | LookUpPriorCall
    | CommitDecision
    | StartRecording
    | SkipRecording
    | NoticeCallee
    | Continue
    | Hangup
)
