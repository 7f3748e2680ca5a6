"""Purpose limitation: which recording may serve which purpose.

A sales recording is evidence of the transaction and, during its retention, also serves
internal training (the notice calls it a compatible purpose). A consent recording serves
the quality of service the caller agreed to, and the evidence of what was ordered that the
question announces. Nothing else: any access names its purpose and is refused otherwise.
"""

from __future__ import annotations

from flows.policy import CONSENT_PURPOSES, SALES_PURPOSES, LegalBasis, Purpose

# What each legal basis can serve, written once: the default lines carry these same sets.
ALLOWED: dict[LegalBasis, frozenset[Purpose]] = {
    LegalBasis.ZEKOM2_214_7: SALES_PURPOSES,
    LegalBasis.CONSENT: CONSENT_PURPOSES,
}


def may_serve(basis: LegalBasis, purpose: Purpose, line_purposes: frozenset[Purpose]) -> bool:
    """True when a recording of `basis`, made on a line allowing `line_purposes`, may be
    used for `purpose`. A line can narrow its basis' purposes, never widen them."""
    return purpose in ALLOWED[basis] and purpose in line_purposes
