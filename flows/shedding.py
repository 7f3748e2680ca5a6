"""A call the controller sheds: handed on at once, before any prompt, because Asterisk
answers too slowly, or the controller itself runs behind, to serve it properly.

When: `shed_reason` weighs what the adapter measured (`Load`) against the bounds. Two
things make a call served now a call served late: REST requests waiting for a connection
to Asterisk, and decisions waiting for the ledger (the commit that must be on disk before
MixMonitor may start). A caller who pressed 1 waits in silence for that commit; past a
bound, taking on more callers only makes every one of them wait longer.

Nobody heard a notice, so nothing may be recorded: the decision is "none", whatever the
line. On a consent line the caller is neither told nor recorded; on a sales line the call
goes unrecorded. Both are lawful (no recording without notice) and the caller still
reaches an agent; what is lost is only the recording.
"""

from __future__ import annotations

from dataclasses import dataclass
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


DECISION_LAG_BOUND = 0.5  # seconds a decision may wait for the ledger before calls are shed
# Seconds the requests waiting for a connection would take to be sent, at the pace Asterisk
# answers now, before calls are shed: a burst of new calls queues many requests that a
# quick Asterisk clears in milliseconds, and shedding them would lose recordings for nothing.
ARI_WAIT_BOUND = 0.5


@dataclass(frozen=True, slots=True)
class Load:
    """How far behind the controller is, as the adapter measured it when a call arrived."""

    ari_backlog: int  # REST requests waiting for a connection to Asterisk
    decision_lag: float  # seconds: the oldest decision still waiting for its commit, else
    # the recent decisions' time to commit
    ari_wait: float = 0.0  # seconds the waiting requests would take to be sent, at the
    # recent time Asterisk takes per request


@dataclass(frozen=True, slots=True)
class ShedBounds:
    ari_backlog: int
    decision_lag: float = DECISION_LAG_BOUND
    ari_wait: float = ARI_WAIT_BOUND


def shed_reason(load: Load, bounds: ShedBounds) -> str | None:
    """Why a new call is shed now, or None to serve it."""
    if load.ari_backlog > bounds.ari_backlog and load.ari_wait > bounds.ari_wait:
        return (
            f"{load.ari_backlog} ARI requests were waiting, {load.ari_wait:.2f} s of Asterisk's "
            f"answers (bounds {bounds.ari_backlog} and {bounds.ari_wait:g} s)"
        )
    if load.decision_lag > bounds.decision_lag:
        return (
            f"decisions took {load.decision_lag:.2f} s to commit (bound {bounds.decision_lag:g} s)"
        )
    return None
