"""The policy's vocabulary and its one frozen configuration object.

Defaults equal `POLICY.md` (the operator's notice); each is a named constant with the
reason for its value. `flows.config.policy_from_mapping` builds a `Policy` from a parsed
TOML table; the flows get only the values they use.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import time, timedelta
from typing import ClassVar

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


_PURPOSE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class Purpose(str):
    """A purpose a recording may serve: a name the configuration defines (`[purposes.<name>]`,
    `PurposeRule`), not a closed list. The built-in ones are class attributes."""

    __slots__ = ()
    EVIDENCE: ClassVar[Purpose]  # proof of the transaction / of what was ordered
    TRAINING: ClassVar[Purpose]  # internal training (sales recordings, a compatible purpose)
    QUALITY: ClassVar[Purpose]  # keeping a high level of service (consent recordings)

    def __new__(cls, name: object) -> Purpose:
        if isinstance(name, Purpose):
            return name
        if not isinstance(name, str) or not _PURPOSE_NAME.match(name):
            raise ValueError(f"not a purpose name (lowercase letters, digits, - and _): {name!r}")
        return super().__new__(cls, name)

    @property
    def value(self) -> str:
        """The name, as text (what the ledger and the JSON output hold)."""
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"Purpose({self.value!r})"


Purpose.EVIDENCE = Purpose("evidence")
Purpose.TRAINING = Purpose("training")
Purpose.QUALITY = Purpose("quality")


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
    # The retention its notice promises, as the operator declares it: only for a notice the
    # prompt catalog does not know (`flows.config.check_notices`); None: the catalog says.
    notice_retention_months: int | None = None

    def __post_init__(self) -> None:
        if not self.queue:
            object.__setattr__(self, "queue", self.name)
        if self.callback_caller_id is None:
            object.__setattr__(self, "callback_caller_id", self.numbers[0])


SALES_PURPOSES = frozenset({Purpose.EVIDENCE, Purpose.TRAINING})
CONSENT_PURPOSES = frozenset({Purpose.QUALITY, Purpose.EVIDENCE})
# What a line of each kind serves when its configuration lists no purposes: exactly these,
# never every purpose its basis could serve (a new purpose must not widen old lines).
DEFAULT_LINE_PURPOSES: dict[LegalBasis, frozenset[Purpose]] = {
    LegalBasis.ZEKOM2_214_7: SALES_PURPOSES,
    LegalBasis.CONSENT: CONSENT_PURPOSES,
}


@dataclass(frozen=True, slots=True)
class PurposeRule:
    """One purpose and the legal bases under which a recording may serve it
    (`[purposes.<name>]`). A line may list a purpose only if it records under one of them."""

    name: Purpose
    legal_bases: frozenset[LegalBasis]


# The built-in purposes (POLICY.md): a sales recording is evidence and training material, a
# consent recording serves quality and the evidence its question announces.
DEFAULT_PURPOSES: tuple[PurposeRule, ...] = (
    PurposeRule(Purpose.EVIDENCE, frozenset({LegalBasis.ZEKOM2_214_7, LegalBasis.CONSENT})),
    PurposeRule(Purpose.TRAINING, frozenset({LegalBasis.ZEKOM2_214_7})),
    PurposeRule(Purpose.QUALITY, frozenset({LegalBasis.CONSENT})),
)


def allowed_purposes(rules: Iterable[PurposeRule], basis: LegalBasis) -> frozenset[Purpose]:
    """Every purpose a recording made under `basis` may serve at all."""
    return frozenset(rule.name for rule in rules if basis in rule.legal_bases)


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
    purposes: tuple[PurposeRule, ...] = DEFAULT_PURPOSES
    _by_number: dict[str, Line] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        by_number: dict[str, Line] = {}
        names: set[str] = set()
        rules = {rule.name: rule for rule in self.purposes}
        for line in self.lines:
            if line.name in names:
                raise ConfigError(f"lines.{line.name}: the line name is used twice")
            names.add(line.name)
            _check_purposes(line, rules)
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

    def allowed(self, basis: LegalBasis) -> frozenset[Purpose]:
        """Every purpose a recording made under `basis` may serve."""
        return allowed_purposes(self.purposes, basis)

    def line_for(self, e164: str) -> Line | None:
        """The line a normalised number belongs to, or None."""
        return self._by_number.get(e164)

    def line_named(self, name: str) -> Line | None:
        return next((line for line in self.lines if line.name == name), None)

    def window(self, overload: bool) -> timedelta:
        """How far back a callback may reach: the overload window only while the operator's
        switch is on and one is configured."""
        return callback_window(self.callback_window, self.overload_window, overload)


def _check_purposes(line: Line, rules: dict[Purpose, PurposeRule]) -> None:
    """A line serves only purposes that exist and that its legal basis can serve: adding a
    purpose to the configuration never widens a line that does not list it."""
    if not line.purposes:
        raise ConfigError(f"lines.{line.name}.purposes: a line serves at least one purpose")
    for purpose in sorted(line.purposes):
        rule = rules.get(purpose)
        if rule is None:
            raise ConfigError(
                f"lines.{line.name}.purposes: unknown purpose {purpose.value!r} "
                f"(known: {', '.join(sorted(rules))}; define it in [purposes.{purpose.value}])"
            )
        if line.legal_basis not in rule.legal_bases:
            bases = ", ".join(sorted(b.value for b in rule.legal_bases)) or "none"
            raise ConfigError(
                f"lines.{line.name}.purposes: {purpose.value!r} is not a purpose a "
                f"{line.legal_basis.value} recording may serve (line {line.name!r}; "
                f"[purposes.{purpose.value}] legal_bases: {bases})"
            )
