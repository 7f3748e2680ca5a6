"""A call the controller sheds: handed on at once, before any prompt, because Asterisk
answers too slowly to serve it properly (`agi.stasis` decides when).

Nobody heard a notice, so nothing may be recorded: the decision is "none", whatever the
line. On a consent line the caller is neither told nor recorded; on a sales line the call
goes unrecorded. Both are lawful (no recording without notice) and the caller still
reaches an agent; what is lost is only the recording.
"""

from __future__ import annotations

from datetime import datetime

from flows.commands import CommitDecision
from flows.policy import Decision, Line
from flows.retention import keeping


def shed_decision(line: Line, reason: str, now: datetime, *, tz: str) -> CommitDecision:
    return CommitDecision(
        decision=Decision.NONE,
        legal_basis=line.legal_basis,
        digit=None,
        reason=f"shed before the prompt: {reason}",
        prompt=None,
        decided_at=now,
        keep=keeping(line, now, tz=tz),
    )
