"""One communication: who the customer is, which missed call a callback answers, and
whether the consent given on it still stands.

Theory of operation. The notice (POLICY.md §3) makes a callback within the window the same
communication as the call the center missed. Which missed call that is, is decided here
and nowhere else; the ledger only fetches candidates with the parameters chosen here:

* the customer is the caller of an inbound call and the dialled party of a callback or of
  its customer leg (`customer_of`);
* a callback answers a missed call of its own kind, i.e. made under the same legal basis:
  a sales callback answers a missed sales call, a service callback a missed service call,
  never across (`may_answer`);
* every attempt within the window is the same communication until one attempt is
  answered: a callback nobody picked up uses nothing up (`may_answer`);
* among those, the newest missed call is the one answered (`prior_call`);
* the consent given on that missed call stands unless a withdrawal covers it
  (`flows.withdrawal`);
* a communication is named by the id of the call it began with (`communication_of`), so a
  withdrawal of "this communication" finds the missed call and all of its callbacks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from flows.events import NoPriorCall, PriorCallFound
from flows.policy import Decision, Direction, LegalBasis
from flows.withdrawal import Covered, WithdrawalScope, consent_withdrawn

# A customer rarely misses more than a few calls within one window; the look-up reads at
# most this many (newest first), so a flood of missed calls cannot slow a callback.
MAX_CANDIDATES = 20


def customer_of(direction: Direction, caller: str | None, dialed: str | None) -> str | None:
    """The customer's number: who called in, or whom the center calls."""
    return caller if direction is Direction.INBOUND else dialed


def communication_of(call_id: str, linked_to: str | None, parent_communication: str | None) -> str:
    """The id of the communication a call belongs to: the missed call a callback answers,
    the callback a customer's leg belongs to, else the call itself."""
    return linked_to or parent_communication or call_id


@dataclass(frozen=True, slots=True)
class MissedCandidate:
    """A missed inbound call of the customer, as the ledger holds it."""

    call_id: str
    line: str
    legal_basis: LegalBasis
    decision: Decision
    decided_at: datetime | None
    ended_at: datetime
    answered_by_callback: bool  # a callback linked to it was picked up by the customer


def may_answer(basis: LegalBasis, candidate: MissedCandidate, since: datetime) -> bool:
    """Whether a callback made under `basis` at the earliest `since` may answer `candidate`:
    same legal basis (line kind), within the window, not yet answered by another callback."""
    return (
        candidate.legal_basis is basis
        and candidate.ended_at >= since
        and not candidate.answered_by_callback
    )


def prior_call(
    basis: LegalBasis, candidates: Iterable[MissedCandidate], since: datetime
) -> MissedCandidate | None:
    """The missed call a callback answers: the newest one it may answer, or None (a new
    communication)."""
    eligible = [c for c in candidates if may_answer(basis, c, since)]
    return max(eligible, key=lambda c: (c.ended_at, c.call_id), default=None)


def look_up_answer(
    basis: LegalBasis,
    since: datetime,
    customer: str,
    candidates: Iterable[MissedCandidate],
    withdrawals: Iterable[WithdrawalScope],
) -> PriorCallFound | NoPriorCall:
    """The answer to `LookUpPriorCall` from what the ledger fetched."""
    prior = prior_call(basis, candidates, since)
    if prior is None or prior.decided_at is None:
        return NoPriorCall()
    covered = Covered(prior.legal_basis, customer, prior.call_id, prior.decided_at)
    return PriorCallFound(
        call_id=prior.call_id,
        line=prior.line,
        legal_basis=prior.legal_basis,
        decision=prior.decision,
        consent_withdrawn=consent_withdrawn(covered, withdrawals),
    )
