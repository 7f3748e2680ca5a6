"""Purpose limitation: which recording may serve which purpose.

Purposes are data (`flows.policy.PurposeRule`, `[purposes.<name>]` in the configuration):
each names the legal bases under which a recording may serve it. By default a sales
recording is evidence of the transaction and, during its retention, also serves internal
training (the notice calls it a compatible purpose); a consent recording serves the quality
of service the caller agreed to, and the evidence of what was ordered that the question
announces. Each line lists the purposes it serves (checked against its basis at load), and
each recording keeps its line's list from the moment of the decision. Any access names its
purpose and is refused otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable

from flows.policy import LegalBasis, Purpose, PurposeRule, allowed_purposes


def may_serve(
    rules: Iterable[PurposeRule],
    basis: LegalBasis,
    purpose: Purpose,
    line_purposes: frozenset[Purpose],
) -> bool:
    """True when a recording of `basis`, made on a line allowing `line_purposes`, may be
    used for `purpose` under the purpose `rules`. A line can narrow its basis' purposes,
    never widen them, and a rule narrowed later narrows old recordings too."""
    return purpose in allowed_purposes(rules, basis) and purpose in line_purposes
