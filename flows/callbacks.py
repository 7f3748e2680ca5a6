"""The callback: an agent calls back a customer whose call the center missed.

Theory of operation. The notice (POLICY.md §3) treats a callback within one hour of a
missed call as the same communication: the customer is not told again, a sales callback is
recorded, a service callback is recorded only if the customer pressed 1 on the missed call
(and has not withdrawn since). The flow asks for the missed call the callback answers
(`LookUpPriorCall`: one of the same line kind within the window, which widens only while
the operator's overload switch is on; `flows.communication` chooses) and decides from the
answer. With no such call the callback is a new
communication: nothing is recorded on the agent's leg and the customer's leg must hear the
line's notice (`NoticeCallee`), which runs `flows.consent.InboundFlow` on that leg.

The line of a conversation is decided once: a callback that answers a missed call belongs
to the missed call's line, whatever line the agent's endpoint named. Its legal basis,
purposes, retention and the date its numbers are wiped all come from that line (`Keeping`).
A missed call whose line is no longer configured cannot say what its recording would
promise: the callback is not recorded.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

from flows.commands import (
    Command,
    CommitDecision,
    Continue,
    LookUpPriorCall,
    NoticeCallee,
    SkipRecording,
    StartRecording,
)
from flows.events import (
    CallbackPlaced,
    CallerHungUp,
    CommitFailed,
    ControlLost,
    DecisionCommitted,
    NoPriorCall,
    PriorCallFound,
)
from flows.machine import Row, Table, mermaid, step
from flows.policy import TIMEZONE, Decision, LegalBasis, Line, Policy, callback_window
from flows.retention import keeping


class State(enum.Enum):
    AWAITING_CALL = enum.auto()
    LOOKING_UP = enum.auto()  # asking the ledger for the missed call this one answers
    COMMITTING = enum.auto()
    CONTINUED = enum.auto()
    HUNG_UP = enum.auto()


def same_communication(prior: PriorCallFound) -> tuple[Decision, str]:
    """What a callback inherits from the missed call it answers."""
    if prior.legal_basis is LegalBasis.ZEKOM2_214_7:
        return Decision.RECORD, "callback to a missed sales call: same communication"
    if prior.decision is not Decision.RECORD:
        return Decision.REFUSE, "callback to a missed call without consent"
    if prior.consent_withdrawn:
        return Decision.REFUSE, "callback to a missed call whose consent was withdrawn"
    return Decision.RECORD, "callback to a missed call with consent"


class CallbackFlow:
    def __init__(
        self,
        line: Line,
        *,
        callback_window: timedelta,
        overload_window: timedelta | None,
        call_id: str | None = None,
        lines: tuple[Line, ...] = (),
        timezone: str = TIMEZONE,
    ) -> None:
        self.line = line  # the line the callback is made for (its notice if none is found)
        self.call_id = call_id
        # The lines a missed call may belong to (the configuration the call started with).
        self._lines = {known.name: known for known in (*lines, line)}
        self.timezone = timezone
        self.state = State.AWAITING_CALL
        self._callback_window = callback_window
        self._overload_window = overload_window
        self._decision = Decision.NONE
        self._notice_callee = False
        self._window = callback_window
        self._overload = False

    @classmethod
    def for_line(cls, line: Line, policy: Policy, call_id: str | None = None) -> CallbackFlow:
        return cls(
            line,
            callback_window=policy.callback_window,
            overload_window=policy.overload_window,
            call_id=call_id,
            lines=policy.lines,
            timezone=policy.timezone,
        )

    @property
    def decision(self) -> Decision:
        return self._decision

    def handle(self, event: object, now: datetime) -> list[Command]:
        return step(TRANSITIONS, self, event, now)

    def _placed(self, event: CallbackPlaced, now: datetime) -> list[Command]:
        window = callback_window(self._callback_window, self._overload_window, event.overload)
        self._window = window
        self._overload = event.overload
        # A callback answers a missed call of its own kind (`flows.communication`).
        look_up = LookUpPriorCall(
            window=window,
            overload=event.overload,
            since=now - window,
            legal_basis=self.line.legal_basis,
        )
        return [look_up]

    def _found(self, event: PriorCallFound, now: datetime) -> list[Command]:
        self._decision, reason = same_communication(event)
        line = self._lines.get(event.line)
        if line is None or line.legal_basis is not event.legal_basis:
            # Nothing says what its retention and purposes would be: fail closed.
            self._decision = Decision.REFUSE
            reason = f"callback to a missed call on line {event.line!r}, not configured as it was"
            line = self.line
        return [
            CommitDecision(
                decision=self._decision,
                legal_basis=event.legal_basis,
                digit=None,
                reason=reason,
                prompt=None,
                decided_at=now,
                keep=keeping(line, now, tz=self.timezone),
                linked_to=event.call_id,
                window=self._window,
                overload=self._overload,
            )
        ]

    def _not_found(self, event: NoPriorCall, now: datetime) -> list[Command]:
        self._notice_callee = True
        return [
            CommitDecision(
                decision=Decision.NONE,
                legal_basis=self.line.legal_basis,
                digit=None,
                reason="no missed call within the window: a new communication",
                prompt=None,
                decided_at=now,
                keep=keeping(self.line, now, tz=self.timezone),
                window=self._window,
                overload=self._overload,
            )
        ]

    def _committed(self, event: DecisionCommitted, now: datetime) -> list[Command]:
        if self._decision is Decision.RECORD:
            return [StartRecording(), Continue()]
        if self._notice_callee:
            return [
                SkipRecording("the customer's leg hears the notice and decides"),
                NoticeCallee(self.line.name),
                Continue(),
            ]
        return [SkipRecording("no consent on the missed call"), Continue()]

    def _commit_failed(self, event: CommitFailed, now: datetime) -> list[Command]:
        return [
            SkipRecording(f"the decision could not be committed: {event.reason}"),
            Continue(),
        ]


_S = State
_F = CallbackFlow

# fmt: off
TRANSITIONS: Table[State, CallbackFlow] = {
    _S.AWAITING_CALL: {
        CallbackPlaced:    Row(_S.LOOKING_UP, _F._placed),
        CallerHungUp:      Row(_S.HUNG_UP),
        ControlLost:       Row(_S.HUNG_UP),
    },
    _S.LOOKING_UP: {
        PriorCallFound:    Row(_S.COMMITTING, _F._found),
        NoPriorCall:       Row(_S.COMMITTING, _F._not_found),
        CallerHungUp:      Row(_S.HUNG_UP),
        ControlLost:       Row(_S.HUNG_UP),
    },
    _S.COMMITTING: {
        DecisionCommitted: Row(_S.CONTINUED, _F._committed),
        CommitFailed:      Row(_S.CONTINUED, _F._commit_failed),
        CallerHungUp:      Row(_S.HUNG_UP),
        ControlLost:       Row(_S.COMMITTING),
    },
    _S.CONTINUED: {
        CallerHungUp:      Row(_S.CONTINUED),
        ControlLost:       Row(_S.CONTINUED),
    },
    _S.HUNG_UP: {
        PriorCallFound:    Row(_S.HUNG_UP),
        NoPriorCall:       Row(_S.HUNG_UP),
        DecisionCommitted: Row(_S.HUNG_UP),
        CommitFailed:      Row(_S.HUNG_UP),
        CallerHungUp:      Row(_S.HUNG_UP),
        ControlLost:       Row(_S.HUNG_UP),
    },
}
# fmt: on


def diagram() -> str:
    return mermaid(TRANSITIONS, "callback (flows/callbacks.py)")
