"""Numbers, the policy's configuration, and purpose limitation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flows.config import policy_from_mapping
from flows.errors import ConfigError, NumberError
from flows.numbers import normalise
from flows.policy import DEFAULT_PURPOSES, LegalBasis, Purpose
from flows.purposes import may_serve


@pytest.mark.parametrize(
    "raw",
    [
        "040404040",
        "040 40 40 40",
        "+38640404040",
        "0038640404040",
        "38640404040",
        "040-40-40-40",
        "(040) 40 40 40",
    ],
)
def test_one_number_written_many_ways(raw: str) -> None:
    """Every way the notice's numbers are written normalises to the same E.164."""
    assert normalise(raw) == "+38640404040"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "abc",
        "040'; DROP TABLE calls;--",
        "../../etc/passwd",
        "1" * 41,
        "+0123456789",
        "12345",
        "+1234567890123456",
        "040\x0040",
        "40404040",
    ],
)
def test_garbage_is_a_clear_error(raw: str) -> None:
    """Letters, quotes, paths, NUL, too short or too long: a NumberError, never a number."""
    with pytest.raises(NumberError, match="not a phone number"):
        normalise(raw)


@given(st.text(max_size=60))
def test_normalise_returns_e164_or_raises(raw: str) -> None:
    """Any text yields '+' and 8-15 digits, or NumberError."""
    try:
        number = normalise(raw)
    except NumberError:
        return
    assert number[0] == "+" and number[1:].isdigit() and 8 <= len(number) - 1 <= 15


def test_defaults_equal_the_policy() -> None:
    """Without a file the lines, numbers, retention and windows are POLICY.md's."""
    policy = policy_from_mapping({})
    sales = policy.line_for("+38640404045")
    assert sales is not None and sales.legal_basis is LegalBasis.ZEKOM2_214_7
    for number in ["040404040", "040404030", "040404085", "040404042", "040404066", "040404041"]:
        line = policy.line_for(normalise(number))
        assert line is not None and line.legal_basis is LegalBasis.CONSENT
    assert policy.retention_months == 6 and policy.withdrawal_working_days == 5
    assert policy.callback_window.total_seconds() == 3600 and policy.overload_window is None


def _lines(**sales: Any) -> dict[str, Any]:
    base = {"policy": "notice", "numbers": ["040 40 40 45"], "prompt": "callrec-sales-notice"}
    base.update(sales)
    return {"lines": {"sales": base}, "callbacks": {"default_line": "sales"}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"policy": {"retention_months": "six"}}, r"policy\.retention_months: must be a whole"),
        ({"policy": {"retention_mnths": 6}}, r"policy\.retention_mnths: unknown key"),
        ({"policy": {"timezone": "Mars/Olympus"}}, r"policy\.timezone: unknown time zone"),
        ({"policy": {"timezone": "Europe/" + "x" * 300}}, r"policy\.timezone: unknown time"),
        ({"policy": {"timezone": [None, {"a": 1}] * 40}}, r"policy\.timezone: must be a time"),
        ({"consent": {"digit_timeout_seconds": 0}}, r"consent\.digit_timeout_seconds: must be"),
        (_lines(policy="maybe"), r"lines\.sales\.policy: must be"),
        (_lines(numbers=["04O"]), r"lines\.sales\.numbers: not a phone number"),
        (_lines(purposes=["marketing"]), r"lines\.sales\.purposes: unknown purpose"),
        (_lines(purposes=["quality"]), r"'quality' is not a purpose a zekom2-214-7"),
        (_lines(legal_basis="consent"), r"lines\.sales\.legal_basis"),
        (_lines(prompt="../evil"), r"lines\.sales\.prompt: must be a prompt id"),
        ({"callbacks": {"default_line": "nope"}}, r"callbacks\.default_line"),
    ],
)
def test_bad_config_names_key_and_reason(data: dict[str, Any], message: str) -> None:
    """A bad value gives one ConfigError naming the key and the reason."""
    with pytest.raises(ConfigError, match=message):
        policy_from_mapping(data)


def test_a_number_on_two_lines_is_an_error() -> None:
    """A number belongs to one line; listing it twice is refused."""
    data = {
        "lines": {
            "sales": {"policy": "notice", "numbers": ["040404045"], "prompt": "a"},
            "service": {
                "policy": "consent",
                "numbers": ["+386 40 40 40 45"],
                "prompt": "b",
                "invalid_key_prompt": "c",
                "ask_again_prompt": "d",
            },
        }
    }
    with pytest.raises(ConfigError, match=r"already a number of line 'sales'"):
        policy_from_mapping(data)


def test_purposes_follow_the_legal_basis() -> None:
    """Sales recordings serve evidence and training; consent ones quality and evidence."""
    everything = frozenset({Purpose.EVIDENCE, Purpose.TRAINING, Purpose.QUALITY})
    rules = DEFAULT_PURPOSES
    assert may_serve(rules, LegalBasis.ZEKOM2_214_7, Purpose.TRAINING, everything)
    assert not may_serve(rules, LegalBasis.ZEKOM2_214_7, Purpose.QUALITY, everything)
    assert may_serve(rules, LegalBasis.CONSENT, Purpose.QUALITY, everything)
    assert not may_serve(rules, LegalBasis.CONSENT, Purpose.TRAINING, everything)
    assert not may_serve(rules, LegalBasis.CONSENT, Purpose.QUALITY, frozenset({Purpose.EVIDENCE}))


def test_a_line_carries_its_queue_retention_and_callback_number() -> None:
    """A line's queue, retention and callback caller ID come from its own entry, and fall back
    to its name, the policy's retention and its first number."""
    policy = policy_from_mapping(
        {
            "policy": {"retention_months": 6},
            "lines": {
                "complaints": {
                    "policy": "consent",
                    "numbers": ["040 40 40 50"],
                    "prompt": "callrec-complaints-question",
                    "invalid_key_prompt": "callrec-consent-invalid",
                    "ask_again_prompt": "callrec-consent-again",
                    "queue": "complaints-q",
                    "retention_months": 12,
                    "callback_caller_id": "01 234 56 78",
                },
                "sales": {"policy": "notice", "numbers": ["040 40 40 45"], "prompt": "x"},
            },
        }
    )
    complaints = policy.line_named("complaints")
    sales = policy.line_named("sales")
    assert complaints is not None and sales is not None
    assert (complaints.queue, complaints.retention_months) == ("complaints-q", 12)
    assert complaints.callback_caller_id == "+38612345678"
    assert (sales.queue, sales.retention_months, sales.callback_caller_id) == (
        "sales",
        6,
        "+38640404045",
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("queue", "sales,1", "lines.sales.queue"),
        ("queue", "a]b", "lines.sales.queue"),
        ("retention_months", 0, "lines.sales.retention_months"),
        ("callback_caller_id", "../x", "lines.sales.callback_caller_id"),
    ],
)
def test_a_bad_line_setting_names_the_line(key: str, value: Any, message: str) -> None:
    """A queue name that could break the dialplan, a retention of zero or a caller ID that is
    not a number is a configuration error naming the line's key."""
    line = {"policy": "notice", "numbers": ["040 40 40 45"], "prompt": "x", key: value}
    with pytest.raises(ConfigError, match=message):
        policy_from_mapping({"lines": {"sales": line}})
