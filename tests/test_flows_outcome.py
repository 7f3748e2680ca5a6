"""Answered or missed: one reading of what the queue and the recording say, for both modes."""

from __future__ import annotations

import pytest

from flows.outcome import (
    LEFT_BEFORE_RECORDING,
    NO_FILE_THOUGH_ANSWERED,
    Outcome,
    QueueObserver,
    hangup_report,
    outcome_after_restart,
    unrecorded_reason,
)
from flows.policy import Decision


@pytest.mark.parametrize(
    ("decided", "answered_time", "abandoned", "agent", "outcome"),
    [
        # ari-traces/queue-caller-gives-up-missed.json: the caller gave up in the queue.
        (True, "0", "TRUE", "", Outcome.MISSED),
        (True, "12", "", "", Outcome.ANSWERED),
        (True, "", "", "PJSIP/agent-00000001", Outcome.ANSWERED),
        (True, "not a number", "", "", Outcome.MISSED),
        (False, "", "", "", Outcome.ABANDONED_IN_PROMPT),
    ],
)
def test_a_hangup_report_reads_as_the_queue_left_it(
    decided: bool, answered_time: str, abandoned: str, agent: str, outcome: Outcome
) -> None:
    """The FastAGI hangup handler's variables give the same outcome as ARI's events."""
    report = hangup_report(
        decided=decided, answered_time=answered_time, abandoned=abandoned, agent=agent
    ).outcome()
    assert report is outcome


def test_a_call_that_ended_unseen_is_judged_by_its_recording() -> None:
    """After a restart: audio beyond the header means an agent; a decided call without it
    was missed (so it is called back); an undecided one was abandoned in the prompt."""
    assert outcome_after_restart(decided=True, recorded_audio=True) is Outcome.ANSWERED
    assert outcome_after_restart(decided=True, recorded_audio=False) is Outcome.MISSED
    assert outcome_after_restart(decided=False, recorded_audio=False) is Outcome.ABANDONED_IN_PROMPT


@pytest.mark.parametrize(
    ("reported", "needs_audio"),
    [
        ({"ANSWEREDTIME": "0", "ABANDONED": "TRUE"}, False),  # the queue: nobody answered
        ({"ANSWEREDTIME": "12"}, False),  # the queue (or Dial): talked 12 s
        ({"CALLREC_AGENT": "PJSIP/agent"}, False),  # an agent took it
        ({"ANSWEREDTIME": "", "ABANDONED": "", "CALLREC_AGENT": ""}, True),  # no queue here
        ({}, True),
    ],
)
def test_a_leg_whose_queue_said_nothing_is_judged_by_its_recording(
    reported: dict[str, str], needs_audio: bool
) -> None:
    """A leg with no queue (a callback's customer leg) reports empty variables at its end:
    only its recording can tell whether it was bridged; a queue's report settles it."""
    observer = QueueObserver(continued=True)
    for name, value in reported.items():
        observer.saw_variable(name, value)
    assert observer.needs_audio() is needs_audio
    if needs_audio:
        observer.saw_recorded_audio(beyond_header=True)
        assert observer.outcome() is Outcome.ANSWERED


@pytest.mark.parametrize(
    ("decision", "outcome", "file_written", "reason"),
    [
        (Decision.RECORD, Outcome.ABANDONED_IN_PROMPT, False, LEFT_BEFORE_RECORDING),
        (Decision.RECORD, Outcome.MISSED, False, LEFT_BEFORE_RECORDING),
        (Decision.RECORD, Outcome.ANSWERED, False, NO_FILE_THOUGH_ANSWERED),
        (Decision.RECORD, Outcome.ANSWERED, True, None),
        (Decision.RECORD, None, False, None),  # not ended: MixMonitor may still start
        (Decision.REFUSE, Outcome.MISSED, False, None),
        (Decision.NONE, Outcome.ABANDONED_IN_PROMPT, False, None),
    ],
)
def test_a_decision_to_record_without_a_file_says_why(
    decision: Decision, outcome: Outcome | None, file_written: bool, reason: str | None
) -> None:
    """Only an ended call decided "record" whose file was never written is owed a reason."""
    assert (
        unrecorded_reason(decision=decision, outcome=outcome, file_written=file_written) == reason
    )
