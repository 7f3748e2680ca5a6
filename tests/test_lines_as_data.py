"""Lines as data (policy side): purposes and retention per line, validated at load, and the
line of a conversation decided once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from flows.callbacks import CallbackFlow
from flows.commands import CommitDecision
from flows.config import check_notices, policy_from_mapping
from flows.consent import InboundFlow
from flows.errors import ConfigError
from flows.events import CallbackPlaced, CallEntered, DigitPressed, PriorCallFound
from flows.policy import Decision, LegalBasis, Purpose
from flows.retention import delete_after
from prompts.catalog import load_catalog, promised_months, promises

NOW = datetime(2026, 3, 4, 9, 30, tzinfo=UTC)
COMPLAINTS = Purpose("complaints")


def complaints_config(**line: Any) -> dict[str, Any]:
    """The README's recipe: a complaints purpose and line next to the built-in two."""
    return {
        "purposes": {"complaints": {"legal_bases": ["consent"]}},
        "lines": {
            "sales": {
                "policy": "notice",
                "numbers": ["040 40 40 45", "040 40 40 46"],
                "prompt": "callrec-sales-notice",
            },
            "service": {
                "policy": "consent",
                "numbers": ["040 40 40 40"],
                "prompt": "callrec-consent-question",
                "invalid_key_prompt": "callrec-consent-invalid",
                "ask_again_prompt": "callrec-consent-again",
            },
            "complaints": {
                "policy": "consent",
                "numbers": ["040 40 40 50"],
                "purposes": ["quality", "complaints"],
                "prompt": "callrec-complaints-question",
                "invalid_key_prompt": "callrec-consent-invalid",
                "ask_again_prompt": "callrec-consent-again",
                "queue": "complaints",
                "retention_months": 12,
                **line,
            },
        },
    }


def test_a_new_purpose_widens_no_line_that_does_not_list_it() -> None:
    """Defining the complaints purpose gives it to the complaints line only; the service
    line, of the same legal basis, keeps quality and evidence."""
    policy = policy_from_mapping(complaints_config())
    service, complaints = policy.line_named("service"), policy.line_named("complaints")
    assert service is not None and complaints is not None
    assert service.purposes == {Purpose.QUALITY, Purpose.EVIDENCE}
    assert complaints.purposes == {Purpose.QUALITY, COMPLAINTS}
    assert COMPLAINTS in policy.allowed(LegalBasis.CONSENT)
    assert COMPLAINTS not in policy.allowed(LegalBasis.ZEKOM2_214_7)


def test_a_purpose_the_lines_basis_cannot_serve_names_the_line() -> None:
    """A sales line listing a purpose defined for consent recordings only is refused, and
    the error names the line and the purpose."""
    data = complaints_config()
    data["lines"]["sales"]["purposes"] = ["evidence", "complaints"]
    with pytest.raises(ConfigError, match=r"lines\.sales\.purposes: 'complaints' .*line 'sales'"):
        policy_from_mapping(data)


@pytest.mark.parametrize(
    ("purposes", "message"),
    [
        ({"Bad Name": {"legal_bases": ["consent"]}}, r"purposes\.Bad Name: a purpose name"),
        ({"complaints": {"legal_bases": []}}, r"purposes\.complaints\.legal_bases: must be"),
        ({"complaints": {"legal_bases": ["gdpr"]}}, r"unknown legal basis 'gdpr'"),
        ({"complaints": {"legal_bases": ["consent"], "ttl": 3}}, r"complaints\.ttl: unknown"),
    ],
)
def test_a_bad_purpose_table_is_a_clear_error(purposes: dict[str, Any], message: str) -> None:
    """A malformed [purposes.<name>] gives one ConfigError naming the key."""
    with pytest.raises(ConfigError, match=message):
        policy_from_mapping({"purposes": purposes})


def test_redefining_a_builtin_purpose_narrows_the_lines_that_list_it() -> None:
    """Training redefined for consent recordings only makes the default sales line, which
    lists training, a configuration error naming it."""
    with pytest.raises(ConfigError, match=r"lines\.sales\.purposes: 'training'"):
        policy_from_mapping({"purposes": {"training": {"legal_bases": ["consent"]}}})


def test_the_catalog_reads_each_notices_promise() -> None:
    """The catalog states the months each notice promises, from the text the caller hears."""
    said = promises(load_catalog())
    assert said["callrec-sales-notice"] == 6
    assert said["callrec-consent-question"] == 6
    assert said["callrec-complaints-question"] == 12
    assert said["callrec-consent-again"] is None
    assert promised_months("Posnetek bomo hranili 1 mesec.") == 1
    with pytest.raises(ConfigError, match="at once"):
        promised_months("hranili 6 mesecev ... hranili 12 mesecev")


def test_the_complaints_line_agrees_with_its_notice() -> None:
    """The recipe's configuration passes the notice check: 12 months, and its notice says 12."""
    check_notices(policy_from_mapping(complaints_config()), promises(load_catalog()))
    check_notices(policy_from_mapping({}), promises(load_catalog()))


def test_a_line_keeping_longer_than_its_notice_says_is_refused() -> None:
    """A complaints line playing the 6-month service question but keeping 12 months is a
    configuration error naming the line and the prompt."""
    policy = policy_from_mapping(complaints_config(prompt="callrec-consent-question"))
    with pytest.raises(ConfigError, match=r"lines\.complaints: .*'callrec-consent-question'"):
        check_notices(policy, promises(load_catalog()))


def test_a_notice_the_catalog_does_not_know_needs_a_declared_promise() -> None:
    """An unknown notice is refused unless the line declares what it promises, and the
    declaration must then match the line's retention."""
    unknown = policy_from_mapping(complaints_config(prompt="studio-complaints"))
    with pytest.raises(ConfigError, match=r"lines\.complaints: its notice 'studio-complaints'"):
        check_notices(unknown, promises(load_catalog()))
    declared = complaints_config(prompt="studio-complaints", notice_retention_months=12)
    check_notices(policy_from_mapping(declared), promises(load_catalog()))
    wrong = complaints_config(prompt="studio-complaints", notice_retention_months=6)
    with pytest.raises(ConfigError, match="promises 6 months"):
        check_notices(policy_from_mapping(wrong), promises(load_catalog()))
    contradicting = complaints_config(notice_retention_months=6)
    with pytest.raises(ConfigError, match="says 12 months"):
        check_notices(policy_from_mapping(contradicting), promises(load_catalog()))


def test_an_inbound_decision_carries_its_lines_retention_and_purposes() -> None:
    """A complaints call's decision fixes a delete date 12 months on and its line's purposes."""
    policy = policy_from_mapping(complaints_config())
    line = policy.line_named("complaints")
    assert line is not None
    flow = InboundFlow.for_line(line, policy)
    flow.handle(CallEntered(), NOW)
    out = flow.handle(DigitPressed("1"), NOW)
    commit = next(c for c in out if isinstance(c, CommitDecision))
    assert commit.decision is Decision.RECORD
    assert commit.keep.line == "complaints"
    assert commit.keep.purposes == {Purpose.QUALITY, COMPLAINTS}
    assert commit.keep.delete_after == delete_after(NOW, months=12, tz=policy.timezone)


def test_a_linked_callback_takes_the_missed_calls_line() -> None:
    """A callback the agent places on the service line that answers a missed complaints
    call belongs to the complaints line: its retention and purposes, not service's."""
    policy = policy_from_mapping(complaints_config())
    service = policy.line_named("service")
    assert service is not None
    flow = CallbackFlow.for_line(service, policy)
    flow.handle(CallbackPlaced(overload=False), NOW)
    found = PriorCallFound("m1", "complaints", LegalBasis.CONSENT, Decision.RECORD, False)
    (commit,) = flow.handle(found, NOW)
    assert isinstance(commit, CommitDecision)
    assert commit.decision is Decision.RECORD and commit.linked_to == "m1"
    assert commit.keep.line == "complaints"
    assert commit.keep.purposes == {Purpose.QUALITY, COMPLAINTS}
    assert commit.keep.delete_after == delete_after(NOW, months=12, tz=policy.timezone)


def test_a_callback_to_a_line_no_longer_configured_is_not_recorded() -> None:
    """A missed call whose line is gone from the configuration cannot say how long its
    conversation is kept: the callback goes on unrecorded."""
    policy = policy_from_mapping({})
    service = policy.line_named("service")
    assert service is not None
    flow = CallbackFlow.for_line(service, policy)
    flow.handle(CallbackPlaced(overload=False), NOW)
    found = PriorCallFound("m1", "complaints", LegalBasis.CONSENT, Decision.RECORD, False)
    (commit,) = flow.handle(found, NOW)
    assert isinstance(commit, CommitDecision)
    assert commit.decision is Decision.REFUSE
    assert "complaints" in commit.reason
