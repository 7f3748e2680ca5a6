"""The inbound call: disclosure, the 1/2 question, and the decision.

Theory of operation. A call enters (`CallEntered`) and is answered; the line's prompt
plays. On a sales line (`LinePolicy.NOTICE`) the notice is heard to its end, no key is
asked, and the decision is RECORD under ZEKom-2 Art. 214(7). On a consent line the
question plays with barge-in: 1 is consent, 2 refusal; another key replays the choice (up
to `invalid_key_limit` times); silence after the question asks once more
(`no_key_retries`), then the call goes on with no decision. Refusing or not answering costs
the caller nothing: every path ends in `Continue` to the same queue, only unrecorded.

The decision is committed (`CommitDecision`) and only the ledger's confirmation
(`DecisionCommitted`) can lead to `StartRecording`; a failed commit or a hang-up at any
point leads to no recording. Prompts and waits carry tokens, because Asterisk still
reports `PlaybackFinished` for a playback that was stopped on a key press: a stale token
is ignored.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

from flows.commands import (
    Answer,
    CancelWait,
    Command,
    CommitDecision,
    Continue,
    PlayPrompt,
    SkipRecording,
    StartRecording,
    StopPrompt,
    WaitForDigit,
)
from flows.events import (
    CallEntered,
    CallerHungUp,
    CommitFailed,
    ControlLost,
    DecisionCommitted,
    DigitPressed,
    DigitTimedOut,
    PromptFailed,
    PromptFinished,
)
from flows.machine import Rule, Table, mermaid, stays, step
from flows.policy import Decision, Line, LinePolicy, Policy

CONSENT_KEY = "1"
REFUSAL_KEY = "2"


class State(enum.Enum):
    AWAITING_CALL = enum.auto()
    HEARING_NOTICE = enum.auto()  # sales notice playing; keys do nothing
    HEARING_QUESTION = enum.auto()  # consent question (or a repeat) playing; a key counts
    AWAITING_KEY = enum.auto()  # question over, the digit timer runs
    COMMITTING = enum.auto()  # decision sent to the ledger, waiting for its confirmation
    CONTINUED = enum.auto()  # handed back to the dialplan; the flow is over
    HUNG_UP = enum.auto()  # the caller left; nothing will be recorded


class InboundFlow:
    """One inbound call on one line. `handle(event, now)` returns the commands to run."""

    def __init__(
        self,
        line: Line,
        *,
        digit_timeout: timedelta,
        no_key_retries: int,
        invalid_key_limit: int,
        call_id: str | None = None,
    ) -> None:
        self.line = line
        self.call_id = call_id
        self.state = State.AWAITING_CALL
        self._digit_timeout = digit_timeout
        self._no_key_retries = no_key_retries
        self._invalid_key_limit = invalid_key_limit
        self._token = 0
        self._silences = 0
        self._invalid_keys = 0
        self._decision = Decision.NONE

    @classmethod
    def for_line(cls, line: Line, policy: Policy, call_id: str | None = None) -> InboundFlow:
        return cls(
            line,
            digit_timeout=policy.digit_timeout,
            no_key_retries=policy.no_key_retries,
            invalid_key_limit=policy.invalid_key_limit,
            call_id=call_id,
        )

    @property
    def decision(self) -> Decision:
        """The decision committed (or being committed); NONE until there is one."""
        return self._decision

    def handle(self, event: object, now: datetime) -> list[Command]:
        return step(TRANSITIONS, self, event, now)

    # -- actions -------------------------------------------------------------------------

    def _play(self, prompt: str, *, barge_in: bool) -> PlayPrompt:
        self._token += 1
        return PlayPrompt(prompt, barge_in=barge_in, token=self._token)

    def _commit(
        self, decision: Decision, digit: str | None, reason: str, now: datetime
    ) -> CommitDecision:
        self._decision = decision
        return CommitDecision(
            decision=decision,
            legal_basis=self.line.legal_basis,
            digit=digit,
            reason=reason,
            prompt=self.line.prompts.notice,
            decided_at=now,
        )

    def _entered(self, event: CallEntered, now: datetime) -> tuple[State, list[Command]]:
        if self.line.policy is LinePolicy.NOTICE:
            return State.HEARING_NOTICE, [
                Answer(),
                self._play(self.line.prompts.notice, barge_in=False),
            ]
        return State.HEARING_QUESTION, [
            Answer(),
            self._play(self.line.prompts.notice, barge_in=True),
        ]

    def _notice_finished(self, event: PromptFinished, now: datetime) -> tuple[State, list[Command]]:
        if event.token != self._token:
            return self.state, []
        commit = self._commit(Decision.RECORD, None, "the caller heard the notice", now)
        return State.COMMITTING, [commit]

    def _question_finished(
        self, event: PromptFinished, now: datetime
    ) -> tuple[State, list[Command]]:
        if event.token != self._token:
            return self.state, []
        return State.AWAITING_KEY, [WaitForDigit(self._digit_timeout, token=self._token)]

    def _key(self, event: DigitPressed, now: datetime) -> tuple[State, list[Command]]:
        # Stop what is running for this token: the playback (barge-in) or the timer.
        stop: Command = (
            StopPrompt(self._token)
            if self.state is State.HEARING_QUESTION
            else CancelWait(self._token)
        )
        if event.digit == CONSENT_KEY:
            return State.COMMITTING, [
                stop,
                self._commit(Decision.RECORD, event.digit, "the caller pressed 1", now),
            ]
        if event.digit == REFUSAL_KEY:
            return State.COMMITTING, [
                stop,
                self._commit(Decision.REFUSE, event.digit, "the caller pressed 2", now),
            ]
        self._invalid_keys += 1
        if self._invalid_keys > self._invalid_key_limit:
            reason = f"{self._invalid_keys} keys other than 1 or 2"
            return State.COMMITTING, [stop, self._commit(Decision.NONE, None, reason, now)]
        prompt = self.line.prompts.invalid_key or self.line.prompts.notice
        return State.HEARING_QUESTION, [stop, self._play(prompt, barge_in=True)]

    def _silence(self, event: DigitTimedOut, now: datetime) -> tuple[State, list[Command]]:
        if event.token != self._token:
            return self.state, []
        self._silences += 1
        if self._silences > self._no_key_retries:
            reason = f"no key after {self._silences} questions"
            return State.COMMITTING, [self._commit(Decision.NONE, None, reason, now)]
        prompt = self.line.prompts.ask_again or self.line.prompts.notice
        return State.HEARING_QUESTION, [self._play(prompt, barge_in=True)]

    def _committed(self, event: DecisionCommitted, now: datetime) -> tuple[State, list[Command]]:
        if self._decision is Decision.RECORD:
            return State.CONTINUED, [StartRecording(), Continue()]
        reason = "the caller refused" if self._decision is Decision.REFUSE else "no decision"
        return State.CONTINUED, [SkipRecording(reason), Continue()]

    def _commit_failed(self, event: CommitFailed, now: datetime) -> tuple[State, list[Command]]:
        return State.CONTINUED, [
            SkipRecording(f"the decision could not be committed: {event.reason}"),
            Continue(),
        ]

    def _hung_up_before_decision(
        self, event: CallerHungUp, now: datetime
    ) -> tuple[State, list[Command]]:
        stop: list[Command] = []
        if self.state is State.AWAITING_KEY:
            stop.append(CancelWait(self._token))
        reason = f"the caller hung up in {self.state.name}"
        return State.HUNG_UP, [*stop, self._commit(Decision.NONE, None, reason, now)]

    def _control_lost(self, event: ControlLost, now: datetime) -> tuple[State, list[Command]]:
        # Fail closed: whatever was asked or pressed, no decision means no recording; the
        # adapter still tries to hand the caller on to an agent, unrecorded.
        reason = f"control of the channel was lost: {event.reason}"
        stop: list[Command] = []
        if self.state in (State.HEARING_NOTICE, State.HEARING_QUESTION):
            stop.append(StopPrompt(self._token))  # a playing prompt would hold the channel
        elif self.state is State.AWAITING_KEY:
            stop.append(CancelWait(self._token))
        return State.COMMITTING, [*stop, self._commit(Decision.NONE, None, reason, now)]

    def _prompt_failed(self, event: PromptFailed, now: datetime) -> tuple[State, list[Command]]:
        # A notice nobody heard informs nobody: fail closed, as when control is lost.
        if event.token != self._token:
            return self.state, []
        reason = "the prompt could not be played"
        return State.COMMITTING, [self._commit(Decision.NONE, None, reason, now)]

    def _hung_up_while_committing(
        self, event: CallerHungUp, now: datetime
    ) -> tuple[State, list[Command]]:
        # The commit in flight stands, but its confirmation will start nothing.
        return State.HUNG_UP, []


def _hung_up_before_entry(
    flow: InboundFlow, event: CallerHungUp | ControlLost, now: datetime
) -> tuple[State, list[Command]]:
    return State.HUNG_UP, []


_S = State
_F = InboundFlow

TRANSITIONS: Table[State, InboundFlow] = {
    (_S.AWAITING_CALL, CallEntered): Rule(_F._entered, (_S.HEARING_NOTICE, _S.HEARING_QUESTION)),
    (_S.AWAITING_CALL, CallerHungUp): Rule(_hung_up_before_entry, (_S.HUNG_UP,)),
    (_S.AWAITING_CALL, ControlLost): Rule(_hung_up_before_entry, (_S.HUNG_UP,)),
    (_S.HEARING_NOTICE, ControlLost): Rule(_F._control_lost, (_S.COMMITTING,)),
    (_S.HEARING_QUESTION, ControlLost): Rule(_F._control_lost, (_S.COMMITTING,)),
    (_S.AWAITING_KEY, ControlLost): Rule(_F._control_lost, (_S.COMMITTING,)),
    (_S.COMMITTING, ControlLost): stays(_S.COMMITTING),
    (_S.CONTINUED, ControlLost): stays(_S.CONTINUED),
    (_S.HUNG_UP, ControlLost): stays(_S.HUNG_UP),
    (_S.HEARING_NOTICE, PromptFinished): Rule(
        _F._notice_finished, (_S.COMMITTING, _S.HEARING_NOTICE)
    ),
    (_S.HEARING_NOTICE, DigitPressed): stays(_S.HEARING_NOTICE),
    (_S.HEARING_NOTICE, PromptFailed): Rule(_F._prompt_failed, (_S.COMMITTING, _S.HEARING_NOTICE)),
    (_S.HEARING_QUESTION, PromptFailed): Rule(
        _F._prompt_failed, (_S.COMMITTING, _S.HEARING_QUESTION)
    ),
    (_S.AWAITING_KEY, PromptFailed): stays(_S.AWAITING_KEY),
    (_S.COMMITTING, PromptFailed): stays(_S.COMMITTING),
    (_S.CONTINUED, PromptFailed): stays(_S.CONTINUED),
    (_S.HUNG_UP, PromptFailed): stays(_S.HUNG_UP),
    (_S.HEARING_NOTICE, CallerHungUp): Rule(_F._hung_up_before_decision, (_S.HUNG_UP,)),
    (_S.HEARING_QUESTION, PromptFinished): Rule(
        _F._question_finished, (_S.AWAITING_KEY, _S.HEARING_QUESTION)
    ),
    (_S.HEARING_QUESTION, DigitPressed): Rule(_F._key, (_S.COMMITTING, _S.HEARING_QUESTION)),
    (_S.HEARING_QUESTION, DigitTimedOut): stays(_S.HEARING_QUESTION),
    (_S.HEARING_QUESTION, CallerHungUp): Rule(_F._hung_up_before_decision, (_S.HUNG_UP,)),
    (_S.AWAITING_KEY, DigitPressed): Rule(_F._key, (_S.COMMITTING, _S.HEARING_QUESTION)),
    (_S.AWAITING_KEY, DigitTimedOut): Rule(
        _F._silence, (_S.COMMITTING, _S.HEARING_QUESTION, _S.AWAITING_KEY)
    ),
    (_S.AWAITING_KEY, PromptFinished): stays(_S.AWAITING_KEY),
    (_S.AWAITING_KEY, CallerHungUp): Rule(_F._hung_up_before_decision, (_S.HUNG_UP,)),
    (_S.COMMITTING, DecisionCommitted): Rule(_F._committed, (_S.CONTINUED,)),
    (_S.COMMITTING, CommitFailed): Rule(_F._commit_failed, (_S.CONTINUED,)),
    (_S.COMMITTING, DigitPressed): stays(_S.COMMITTING),
    (_S.COMMITTING, PromptFinished): stays(_S.COMMITTING),
    (_S.COMMITTING, DigitTimedOut): stays(_S.COMMITTING),
    (_S.COMMITTING, CallerHungUp): Rule(_F._hung_up_while_committing, (_S.HUNG_UP,)),
    (_S.CONTINUED, DigitPressed): stays(_S.CONTINUED),
    (_S.CONTINUED, PromptFinished): stays(_S.CONTINUED),
    (_S.CONTINUED, DigitTimedOut): stays(_S.CONTINUED),
    (_S.CONTINUED, CallerHungUp): stays(_S.CONTINUED),
    (_S.HUNG_UP, DecisionCommitted): stays(_S.HUNG_UP),
    (_S.HUNG_UP, CommitFailed): stays(_S.HUNG_UP),
    (_S.HUNG_UP, DigitPressed): stays(_S.HUNG_UP),
    (_S.HUNG_UP, PromptFinished): stays(_S.HUNG_UP),
    (_S.HUNG_UP, DigitTimedOut): stays(_S.HUNG_UP),
    (_S.HUNG_UP, CallerHungUp): stays(_S.HUNG_UP),
}


def diagram() -> str:
    return mermaid(TRANSITIONS, "inbound call (flows/consent.py)")
