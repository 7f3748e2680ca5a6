"""What a withdrawal of consent covers.

Theory of operation. A withdrawal (POLICY.md §5) names either a customer (by the number
they called from: every communication of theirs) or one communication (by a call or a
recording of it, for a caller who had no caller ID, found by time and line). It covers a
recording when the recording belongs to what it names and the recording's decision was
given before the withdrawal was registered (a consent given later is a new consent). Of the
recordings it covers, those made on consent are deleted; the others rest on another legal
basis (ZEKom-2 Art. 214(7) for sales) and are kept, and the withdrawal says so rather than
pretending to delete them. A withdrawal also voids the consent of the missed call it
covers for every later callback of that communication (`consent_withdrawn`).

The ledger fetches the recordings and withdrawals that share a customer or a
communication; which of them a withdrawal covers, and what happens to each, is decided here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from flows.policy import LegalBasis


class Coverage(enum.Enum):
    DELETE = "delete"  # a consent recording the withdrawal covers
    KEEP = "keep"  # covered, but not made on consent: kept, and the withdrawal says why
    NONE = "none"  # not covered


@dataclass(frozen=True, slots=True)
class WithdrawalScope:
    """A registered withdrawal: what it names and when it was registered."""

    withdrawal_id: str
    registered_at: datetime
    customer: str | None  # E.164: every communication of this customer
    communication: str | None  # one communication's id (`flows.communication`)


@dataclass(frozen=True, slots=True)
class Covered:
    """What a withdrawal may cover: a recording, or a missed call a callback answers."""

    legal_basis: LegalBasis
    customer: str | None
    communication: str
    decided_at: datetime


def names(withdrawal: WithdrawalScope, item: Covered) -> bool:
    """Whether the withdrawal names the item's customer or its communication."""
    by_customer = withdrawal.customer is not None and withdrawal.customer == item.customer
    by_communication = (
        withdrawal.communication is not None and withdrawal.communication == item.communication
    )
    return by_customer or by_communication


def coverage(withdrawal: WithdrawalScope, item: Covered) -> Coverage:
    if not names(withdrawal, item) or item.decided_at > withdrawal.registered_at:
        return Coverage.NONE
    if item.legal_basis is not LegalBasis.CONSENT:
        return Coverage.KEEP
    return Coverage.DELETE


def deleted_for(item: Covered, withdrawals: Iterable[WithdrawalScope]) -> WithdrawalScope | None:
    """The earliest withdrawal the item is deleted for, or None when none covers it."""
    covering = [w for w in withdrawals if coverage(w, item) is Coverage.DELETE]
    return min(covering, key=lambda w: (w.registered_at, w.withdrawal_id), default=None)


def consent_withdrawn(item: Covered, withdrawals: Iterable[WithdrawalScope]) -> bool:
    """Whether the consent given on a missed call was withdrawn since: a callback of its
    communication is then not recorded."""
    return deleted_for(item, withdrawals) is not None
