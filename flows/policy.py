"""The policy's vocabulary and its one frozen configuration object.

Defaults equal `POLICY.md` (the operator's notice); each is a named constant with the
reason for its value. `flows.config.policy_from_mapping` builds a `Policy` from a parsed
TOML table; the flows get only the values they use.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import time, timedelta

from flows.errors import ConfigError


class LinePolicy(enum.StrEnum):
    NOTICE = "notice"  # sales: the caller is told, the call is recorded (no key asked)
    CONSENT = "consent"  # customer service: recorded only after the caller presses 1


class LegalBasis(enum.StrEnum):
    ZEKOM2_214_7 = "zekom2-214-7"  # ZEKom-2 Art. 214(7): evidence of a commercial transaction
    CONSENT = "consent"  # GDPR Art. 6(1)(a): the caller pressed 1


class Decision(enum.StrEnum):
    RECORD = "record"
    REFUSE = "refuse"  # the caller pressed 2, or a callback answers a call without a 1
    NONE = "none"  # no decision was given (silence, hang-up): never recorded


class Purpose(enum.StrEnum):
    EVIDENCE = "evidence"  # proof of the transaction / of what was ordered
    TRAINING = "training"  # internal training (sales recordings, a compatible purpose)
    QUALITY = "quality"  # keeping a high level of service (consent recordings)


class Direction(enum.StrEnum):
    INBOUND = "inbound"  # a customer called one of the lines
    CALLBACK = "callback"  # an agent calls a customer back
    CALLEE = "callee"  # the customer's leg of a callback that must hear the notice


# Defaults, each with its reason.
RETENTION_MONTHS = 6  # "posnetek bomo hranili 6 mesecev" (both notices)
WITHDRAWAL_WORKING_DAYS = 5  # "izbrisan najkasneje v 5-ih delovnih dneh po prejemu preklica"
CALLBACK_WINDOW = timedelta(hours=1)  # "Klic vrnemo v roku 1 ure": same communication
DIGIT_TIMEOUT = timedelta(seconds=5)  # after the question ends; long enough to find the key
NO_KEY_RETRIES = 1  # "no key within the timeout: ask once more" (POLICY.md §2 default)
INVALID_KEY_LIMIT = 3  # another key replays the choice; past this the call goes on unrecorded
RECEIPT_CUTOFF: time | None = None  # a withdrawal received on a working day counts that day
TIMEZONE = "Europe/Ljubljana"  # calendar months and working days are Slovenian
SWEEP_INTERVAL = timedelta(hours=1)  # a recording outlives delete_after by at most this
DEFAULT_COUNTRY = "386"


def callback_window(
    base: timedelta, overload_window: timedelta | None, overload: bool
) -> timedelta:
    """How far back a callback may reach: the overload window only while the operator's
    switch is on and one is configured, and never less than the ordinary window."""
    if overload and overload_window is not None:
        return max(base, overload_window)
    return base


@dataclass(frozen=True, slots=True)
class Prompts:
    """Prompt ids (file names under `prompts/sl/`, without extension)."""

    notice: str
    invalid_key: str | None = None  # consent lines: "press 1 or 2"
    ask_again: str | None = None  # consent lines: the choice once more after silence


@dataclass(frozen=True, slots=True)
class Line:
    """One line of the call center: everything the policy, the dialplan and the queues need
    to know about it, written once (`[lines.<name>]` in the configuration)."""

    name: str
    numbers: tuple[str, ...]  # E.164
    policy: LinePolicy
    legal_basis: LegalBasis
    purposes: frozenset[Purpose]
    prompts: Prompts
    queue: str = ""  # the Asterisk queue its callers wait in; empty: the line's name
    retention_months: int = RETENTION_MONTHS  # what its notice promises
    callback_caller_id: str | None = None  # E.164 its callbacks show; None: its first number

    def __post_init__(self) -> None:
        if not self.queue:
            object.__setattr__(self, "queue", self.name)
        if self.callback_caller_id is None:
            object.__setattr__(self, "callback_caller_id", self.numbers[0])


SALES_PURPOSES = frozenset({Purpose.EVIDENCE, Purpose.TRAINING})
CONSENT_PURPOSES = frozenset({Purpose.QUALITY, Purpose.EVIDENCE})

DEFAULT_LINES: tuple[Line, ...] = (
    Line(
        name="sales",
        numbers=("+38640404045",),
        policy=LinePolicy.NOTICE,
        legal_basis=LegalBasis.ZEKOM2_214_7,
        purposes=SALES_PURPOSES,
        prompts=Prompts(notice="callrec-sales-notice"),
    ),
    Line(
        name="service",
        numbers=(
            "+38640404040",
            "+38640404030",
            "+38640404085",
            "+38640404042",
            "+38640404066",
            "+38640404041",
        ),
        policy=LinePolicy.CONSENT,
        legal_basis=LegalBasis.CONSENT,
        purposes=CONSENT_PURPOSES,
        prompts=Prompts(
            notice="callrec-consent-question",
            invalid_key="callrec-consent-invalid",
            ask_again="callrec-consent-again",
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class Policy:
    lines: tuple[Line, ...] = DEFAULT_LINES
    retention_months: int = RETENTION_MONTHS
    withdrawal_working_days: int = WITHDRAWAL_WORKING_DAYS
    callback_window: timedelta = CALLBACK_WINDOW
    overload_window: timedelta | None = None  # off unless the operator configures one
    digit_timeout: timedelta = DIGIT_TIMEOUT
    no_key_retries: int = NO_KEY_RETRIES
    invalid_key_limit: int = INVALID_KEY_LIMIT
    receipt_cutoff: time | None = RECEIPT_CUTOFF
    timezone: str = TIMEZONE
    sweep_interval: timedelta = SWEEP_INTERVAL
    country_code: str = DEFAULT_COUNTRY
    callback_default_line: str = "service"  # no line known: the consent flow, the safe side
    _by_number: dict[str, Line] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        by_number: dict[str, Line] = {}
        names: set[str] = set()
        for line in self.lines:
            if line.name in names:
                raise ConfigError(f"lines.{line.name}: the line name is used twice")
            names.add(line.name)
            for number in line.numbers:
                other = by_number.get(number)
                if other is not None:
                    raise ConfigError(
                        f"lines.{line.name}.numbers: {number} is already a number of line "
                        f"{other.name!r}; a number belongs to one line"
                    )
                by_number[number] = line
        if self.callback_default_line not in names:
            raise ConfigError(
                f"callbacks.default_line: no line is named {self.callback_default_line!r}"
            )
        object.__setattr__(self, "_by_number", by_number)

    def line_for(self, e164: str) -> Line | None:
        """The line a normalised number belongs to, or None."""
        return self._by_number.get(e164)

    def line_named(self, name: str) -> Line | None:
        return next((line for line in self.lines if line.name == name), None)

    def window(self, overload: bool) -> timedelta:
        """How far back a callback may reach: the overload window only while the operator's
        switch is on and one is configured."""
        return callback_window(self.callback_window, self.overload_window, overload)
