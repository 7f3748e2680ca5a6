"""Events: facts the adapters report to a flow. Frozen, comparable, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass

from flows.policy import Decision, LegalBasis


@dataclass(frozen=True, slots=True)
class CallEntered:
    """A customer's call reached the controller on a line (inbound, or the customer's leg
    of a callback that must hear the notice)."""


@dataclass(frozen=True, slots=True)
class CallbackPlaced:
    """An agent's callback to a customer reached the controller.

    `overload` is the operator's overload switch as it stood when the call was placed.
    """

    overload: bool


@dataclass(frozen=True, slots=True)
class PromptFinished:
    """The playback started by `PlayPrompt(token=...)` ended on its own."""

    token: int


@dataclass(frozen=True, slots=True)
class PromptFailed:
    """The playback of `PlayPrompt(token=...)` failed (missing sound, channel going away):
    the caller did not hear it, so it cannot count as told."""

    token: int


@dataclass(frozen=True, slots=True)
class DigitPressed:
    """A DTMF key; what it means (consent, refusal, another key, nothing) is
    `flows.keys.classify`'s to say. Adapters pass only keys it hears."""

    digit: str


@dataclass(frozen=True, slots=True)
class DigitTimedOut:
    """The wait started by `WaitForDigit(token=...)` ran out."""

    token: int


@dataclass(frozen=True, slots=True)
class CallerHungUp:
    """The channel is gone or going; nothing more can be done on it."""


@dataclass(frozen=True, slots=True)
class PriorCallFound:
    """The newest missed call from the customer within the window the flow asked for."""

    call_id: str
    line: str
    legal_basis: LegalBasis
    decision: Decision
    consent_withdrawn: bool  # a withdrawal was registered after that decision


@dataclass(frozen=True, slots=True)
class NoPriorCall:
    """No missed call from the customer within the window."""


@dataclass(frozen=True, slots=True)
class DecisionCommitted:
    """The ledger holds the decision the flow asked to commit."""


@dataclass(frozen=True, slots=True)
class CommitFailed:
    """The ledger could not store the decision: nothing may be recorded."""

    reason: str


@dataclass(frozen=True, slots=True)
class ControlLost:
    """The adapter can no longer drive the channel (Asterisk answered 500, timed out, or the
    connection dropped) before a decision: the call must go on unrecorded."""

    reason: str


Event = (
    CallEntered
    | CallbackPlaced
    | PromptFinished
    | PromptFailed
    | DigitPressed
    | DigitTimedOut
    | CallerHungUp
    | PriorCallFound
    | NoPriorCall
    | DecisionCommitted
    | CommitFailed
    | ControlLost
)
