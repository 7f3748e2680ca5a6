"""The inbound call: disclosure, the 1/2 question, and the decision.

Theory of operation. A call enters (`CallEntered`) and is answered; the line's prompt
plays. On a sales line (`LinePolicy.NOTICE`) the notice is heard to its end, no key is
asked, and the decision is RECORD under ZEKom-2 Art. 214(7). On a consent line the
question plays with barge-in: 1 is consent, 2 refusal; another key replays the choice (up
to `invalid_key_limit` times), and A-D mean nothing (`flows.keys` says why); silence after
the question asks once more (`no_key_retries`), then the call goes on with no decision.
Refusing or not answering costs the caller nothing: every path ends in `Continue` to the
same queue, only unrecorded.

The decision is committed (`CommitDecision`) and only the ledger's confirmation
(`DecisionCommitted`) can lead to `StartRecording`; a failed commit or a hang-up at any
point leads to no recording. Prompts and waits carry tokens, because Asterisk still
reports `PlaybackFinished` for a playback that was stopped on a key press: `step` drops an
event with a stale token before the table is consulted.

`TRANSITIONS` is the whole flow, one next state per row; which key, how many wrong keys
and how many silences are turned into distinct triggers (`_trigger`) before the look-up.
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
from flows.keys import Key, classify
from flows.machine import Row, Table, Trigger, When, mermaid, step
from flows.policy import TIMEZONE, Decision, Line, LinePolicy, Policy
from flows.retention import keeping


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
        timezone: str = TIMEZONE,
    ) -> None:
        self.line = line
        self.call_id = call_id
        self.timezone = timezone  # where the line's retention months are counted
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
            timezone=policy.timezone,
        )

    @property
    def decision(self) -> Decision:
        """The decision committed (or being committed); NONE until there is one."""
        return self._decision

    def handle(self, event: object, now: datetime) -> list[Command]:
        return step(TRANSITIONS, self, event, now, trigger=self._trigger, token=self._token)

    def _trigger(self, event: object) -> Trigger:
        """The row `event` looks up: the conditions that decide where the flow goes are told
        apart here, before the look-up, never inside an action."""
        match event:
            case CallEntered():
                return NOTICE_LINE if self.line.policy is LinePolicy.NOTICE else CONSENT_LINE
            case DigitPressed(digit=digit):
                kind = classify(digit)
                if kind is Key.OTHER and self._invalid_keys >= self._invalid_key_limit:
                    return OTHER_KEY_PAST_LIMIT
                return KEY_TRIGGERS[kind]
            case DigitTimedOut():
                if self._silences >= self._no_key_retries:
                    return SILENCE_PAST_RETRIES
                return SILENCE
        return type(event)

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
            keep=keeping(self.line, now, tz=self.timezone),
        )

    def _stop(self) -> Command:
        """Stop what runs for the current token: the question (barge-in) or the timer."""
        if self.state is State.HEARING_QUESTION:
            return StopPrompt(self._token)
        return CancelWait(self._token)

    def _tell(self, event: CallEntered, now: datetime) -> list[Command]:
        return [Answer(), self._play(self.line.prompts.notice, barge_in=False)]

    def _ask(self, event: CallEntered, now: datetime) -> list[Command]:
        return [Answer(), self._play(self.line.prompts.notice, barge_in=True)]

    def _notice_heard(self, event: PromptFinished, now: datetime) -> list[Command]:
        return [self._commit(Decision.RECORD, None, "the caller heard the notice", now)]

    def _wait_for_key(self, event: PromptFinished, now: datetime) -> list[Command]:
        return [WaitForDigit(self._digit_timeout, token=self._token)]

    def _consent(self, event: DigitPressed, now: datetime) -> list[Command]:
        return [
            self._stop(),
            self._commit(Decision.RECORD, event.digit, "the caller pressed 1", now),
        ]

    def _refusal(self, event: DigitPressed, now: datetime) -> list[Command]:
        return [
            self._stop(),
            self._commit(Decision.REFUSE, event.digit, "the caller pressed 2", now),
        ]

    def _other_key(self, event: DigitPressed, now: datetime) -> list[Command]:
        self._invalid_keys += 1
        prompt = self.line.prompts.invalid_key or self.line.prompts.notice
        return [self._stop(), self._play(prompt, barge_in=True)]

    def _too_many_keys(self, event: DigitPressed, now: datetime) -> list[Command]:
        self._invalid_keys += 1
        reason = f"{self._invalid_keys} keys other than 1 or 2"
        return [self._stop(), self._commit(Decision.NONE, None, reason, now)]

    def _ask_again(self, event: DigitTimedOut, now: datetime) -> list[Command]:
        self._silences += 1
        prompt = self.line.prompts.ask_again or self.line.prompts.notice
        return [self._play(prompt, barge_in=True)]

    def _no_answer(self, event: DigitTimedOut, now: datetime) -> list[Command]:
        self._silences += 1
        reason = f"no key after {self._silences} questions"
        return [self._commit(Decision.NONE, None, reason, now)]

    def _committed(self, event: DecisionCommitted, now: datetime) -> list[Command]:
        if self._decision is Decision.RECORD:
            return [StartRecording(), Continue()]
        reason = "the caller refused" if self._decision is Decision.REFUSE else "no decision"
        return [SkipRecording(reason), Continue()]

    def _commit_failed(self, event: CommitFailed, now: datetime) -> list[Command]:
        return [
            SkipRecording(f"the decision could not be committed: {event.reason}"),
            Continue(),
        ]

    def _hung_up_before_decision(self, event: CallerHungUp, now: datetime) -> list[Command]:
        stop: list[Command] = []
        if self.state is State.AWAITING_KEY:
            stop.append(CancelWait(self._token))
        reason = f"the caller hung up in {self.state.name}"
        return [*stop, self._commit(Decision.NONE, None, reason, now)]

    def _control_lost(self, event: ControlLost, now: datetime) -> list[Command]:
        # Fail closed: whatever was asked or pressed, no decision means no recording; the
        # adapter still tries to hand the caller on to an agent, unrecorded. A playing
        # prompt or a running timer would hold the channel, so it is stopped first.
        reason = f"control of the channel was lost: {event.reason}"
        token = self._token
        stop = CancelWait(token) if self.state is State.AWAITING_KEY else StopPrompt(token)
        return [stop, self._commit(Decision.NONE, None, reason, now)]

    def _prompt_failed(self, event: PromptFailed, now: datetime) -> list[Command]:
        # A notice nobody heard informs nobody: fail closed, as when control is lost.
        reason = "the prompt could not be played"
        return [self._commit(Decision.NONE, None, reason, now)]


# The conditions `InboundFlow._trigger` tells apart.
NOTICE_LINE = When(CallEntered, "notice line")
CONSENT_LINE = When(CallEntered, "consent line")
CONSENT = When(DigitPressed, "consent key")
REFUSAL = When(DigitPressed, "refusal key")
OTHER_KEY = When(DigitPressed, "other key")
OTHER_KEY_PAST_LIMIT = When(DigitPressed, "other key past the limit")
IGNORED_KEY = When(DigitPressed, "ignored key")
KEY_TRIGGERS = {
    Key.CONSENT: CONSENT,
    Key.REFUSAL: REFUSAL,
    Key.OTHER: OTHER_KEY,
    Key.IGNORED: IGNORED_KEY,
}
SILENCE = When(DigitTimedOut, "a retry left")
SILENCE_PAST_RETRIES = When(DigitTimedOut, "no retry left")

_S = State
_F = InboundFlow

# fmt: off
TRANSITIONS: Table[State, InboundFlow] = {
    _S.AWAITING_CALL: {
        NOTICE_LINE:          Row(_S.HEARING_NOTICE, _F._tell),
        CONSENT_LINE:         Row(_S.HEARING_QUESTION, _F._ask),
        CallerHungUp:         Row(_S.HUNG_UP),
        ControlLost:          Row(_S.HUNG_UP),
    },
    _S.HEARING_NOTICE: {
        PromptFinished:       Row(_S.COMMITTING, _F._notice_heard),
        PromptFailed:         Row(_S.COMMITTING, _F._prompt_failed),
        DigitPressed:         Row(_S.HEARING_NOTICE),  # no key is asked on a notice line
        CallerHungUp:         Row(_S.HUNG_UP, _F._hung_up_before_decision),
        ControlLost:          Row(_S.COMMITTING, _F._control_lost),
    },
    _S.HEARING_QUESTION: {
        PromptFinished:       Row(_S.AWAITING_KEY, _F._wait_for_key),
        PromptFailed:         Row(_S.COMMITTING, _F._prompt_failed),
        CONSENT:              Row(_S.COMMITTING, _F._consent),
        REFUSAL:              Row(_S.COMMITTING, _F._refusal),
        OTHER_KEY:            Row(_S.HEARING_QUESTION, _F._other_key),
        OTHER_KEY_PAST_LIMIT: Row(_S.COMMITTING, _F._too_many_keys),
        IGNORED_KEY:          Row(_S.HEARING_QUESTION),  # the question plays on
        DigitTimedOut:        Row(_S.HEARING_QUESTION),  # no wait runs while asking
        CallerHungUp:         Row(_S.HUNG_UP, _F._hung_up_before_decision),
        ControlLost:          Row(_S.COMMITTING, _F._control_lost),
    },
    _S.AWAITING_KEY: {
        CONSENT:              Row(_S.COMMITTING, _F._consent),
        REFUSAL:              Row(_S.COMMITTING, _F._refusal),
        OTHER_KEY:            Row(_S.HEARING_QUESTION, _F._other_key),
        OTHER_KEY_PAST_LIMIT: Row(_S.COMMITTING, _F._too_many_keys),
        IGNORED_KEY:          Row(_S.AWAITING_KEY),  # the wait runs on to its end
        SILENCE:              Row(_S.HEARING_QUESTION, _F._ask_again),
        SILENCE_PAST_RETRIES: Row(_S.COMMITTING, _F._no_answer),
        PromptFinished:       Row(_S.AWAITING_KEY),
        PromptFailed:         Row(_S.AWAITING_KEY),
        CallerHungUp:         Row(_S.HUNG_UP, _F._hung_up_before_decision),
        ControlLost:          Row(_S.COMMITTING, _F._control_lost),
    },
    _S.COMMITTING: {
        DecisionCommitted:    Row(_S.CONTINUED, _F._committed),
        CommitFailed:         Row(_S.CONTINUED, _F._commit_failed),
        # The commit in flight stands, but its confirmation will start nothing.
        CallerHungUp:         Row(_S.HUNG_UP),
        ControlLost:          Row(_S.COMMITTING),
        DigitPressed:         Row(_S.COMMITTING),
        PromptFinished:       Row(_S.COMMITTING),
        PromptFailed:         Row(_S.COMMITTING),
        DigitTimedOut:        Row(_S.COMMITTING),
    },
    _S.CONTINUED: {
        CallerHungUp:         Row(_S.CONTINUED),
        ControlLost:          Row(_S.CONTINUED),
        DigitPressed:         Row(_S.CONTINUED),
        PromptFinished:       Row(_S.CONTINUED),
        PromptFailed:         Row(_S.CONTINUED),
        DigitTimedOut:        Row(_S.CONTINUED),
    },
    _S.HUNG_UP: {
        DecisionCommitted:    Row(_S.HUNG_UP),
        CommitFailed:         Row(_S.HUNG_UP),
        CallerHungUp:         Row(_S.HUNG_UP),
        ControlLost:          Row(_S.HUNG_UP),
        DigitPressed:         Row(_S.HUNG_UP),
        PromptFinished:       Row(_S.HUNG_UP),
        PromptFailed:         Row(_S.HUNG_UP),
        DigitTimedOut:        Row(_S.HUNG_UP),
    },
}
# fmt: on


def diagram() -> str:
    return mermaid(TRANSITIONS, "inbound call (flows/consent.py)")
