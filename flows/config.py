"""Build the `Policy` from a parsed TOML table, checking every key.

Reading the file is `callrec.config`'s job; this module only validates data, so a bad
file gives one `ConfigError` that names the key and the reason. Sections it reads:
`[policy]`, `[consent]`, `[callbacks]`, `[purposes.<name>]`, `[lines.<name>]`. When
`[lines]` is given it replaces the built-in lines entirely (a partial merge would hide a
forgotten number). `[purposes.<name>]` adds a purpose or redefines a built-in one; the others
stay (a line serves only the purposes it lists, so a new purpose widens nothing).

`check_notices` compares what each line's notice promises (the prompt catalog, read by the
caller) with the line's retention.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flows import policy as defaults
from flows.errors import ConfigError, NumberError
from flows.numbers import normalise
from flows.policy import (
    DEFAULT_LINE_PURPOSES,
    LegalBasis,
    Line,
    LinePolicy,
    Policy,
    Prompts,
    Purpose,
    PurposeRule,
)

POLICY_SECTIONS = ("policy", "consent", "callbacks", "purposes", "lines")
_PROMPT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_LINE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_BASIS_OF = {LinePolicy.NOTICE: LegalBasis.ZEKOM2_214_7, LinePolicy.CONSENT: LegalBasis.CONSENT}


def _table(data: Mapping[str, Any], key: str, allowed: set[str]) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: must be a table, got {type(value).__name__}")
    for name in value:
        if name not in allowed:
            raise ConfigError(f"{key}.{name}: unknown key (known: {', '.join(sorted(allowed))})")
    return value


def _int(
    section: Mapping[str, Any], where: str, key: str, default: int, low: int, high: int
) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}.{key}: must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{where}.{key}: must be between {low} and {high}, got {value}")
    return value


def _clock(section: Mapping[str, Any], where: str, key: str) -> time | None:
    value = section.get(key)
    if value is None:
        return None
    if isinstance(value, time):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{2}:\d{2}", value):
        hours, minutes = int(value[:2]), int(value[3:])
        if hours < 24 and minutes < 60:
            return time(hours, minutes)
    raise ConfigError(f'{where}.{key}: must be a time of day like "16:00", got {value!r}')


def _prompt(section: Mapping[str, Any], where: str, key: str, required: bool) -> str | None:
    value = section.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}.{key}: missing (the prompt id the caller hears)")
        return None
    if not isinstance(value, str) or not _PROMPT_ID.match(value):
        raise ConfigError(
            f"{where}.{key}: must be a prompt id of lowercase letters, digits, - and _, "
            f"got {value!r}"
        )
    return value


_QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def _line(name: str, section: Any, country_code: str, retention_months: int) -> Line:
    where = f"lines.{name}"
    if not _LINE_NAME.match(name):
        raise ConfigError(f"{where}: a line name is lowercase letters, digits, - and _")
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: must be a table")
    known = {
        "policy",
        "numbers",
        "legal_basis",
        "purposes",
        "prompt",
        "invalid_key_prompt",
        "ask_again_prompt",
        "queue",
        "retention_months",
        "callback_caller_id",
        "notice_retention_months",
    }
    for key in section:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
    try:
        line_policy = LinePolicy(str(section.get("policy")))
    except ValueError:
        raise ConfigError(
            f'{where}.policy: must be "notice" or "consent", got {section.get("policy")!r}'
        ) from None
    basis = _BASIS_OF[line_policy]
    if "legal_basis" in section and section["legal_basis"] != basis.value:
        raise ConfigError(
            f"{where}.legal_basis: a {line_policy.value} line records under {basis.value!r}, "
            f"not {section['legal_basis']!r}"
        )
    raw_numbers = section.get("numbers")
    if not isinstance(raw_numbers, list) or not raw_numbers:
        raise ConfigError(f"{where}.numbers: must be a non-empty list of phone numbers")
    numbers: list[str] = []
    for raw in raw_numbers:
        try:
            number = normalise(raw, country_code=country_code)
        except NumberError as error:
            raise ConfigError(f"{where}.numbers: {error}") from None
        if number in numbers:
            raise ConfigError(f"{where}.numbers: {number} is listed twice")
        numbers.append(number)
    # Whether each purpose exists and fits the basis is `Policy`'s check, with the rules.
    raw_purposes = section.get("purposes", sorted(DEFAULT_LINE_PURPOSES[basis]))
    if not isinstance(raw_purposes, list) or not raw_purposes:
        raise ConfigError(f"{where}.purposes: must be a non-empty list")
    purposes: set[Purpose] = set()
    for raw in raw_purposes:
        try:
            purposes.add(Purpose(raw))
        except ValueError:
            raise ConfigError(f"{where}.purposes: unknown purpose {raw!r}") from None
    consent = line_policy is LinePolicy.CONSENT
    notice = _prompt(section, where, "prompt", required=True)
    assert notice is not None  # required=True never returns None
    queue = section.get("queue", name)
    if not isinstance(queue, str) or not _QUEUE_NAME.match(queue):
        # The name goes into queues.conf and Queue(): nothing that could end a section or
        # an application's argument list.
        raise ConfigError(
            f"{where}.queue: must be letters, digits, - and _ (an Asterisk queue name), "
            f"got {queue!r}"
        )
    caller_id = section.get("callback_caller_id")
    if caller_id is not None:
        try:
            caller_id = normalise(caller_id, country_code=country_code)
        except NumberError as error:
            raise ConfigError(f"{where}.callback_caller_id: {error}") from None
    return Line(
        name=name,
        numbers=tuple(numbers),
        policy=line_policy,
        legal_basis=basis,
        purposes=frozenset(purposes),
        prompts=Prompts(
            notice=notice,
            invalid_key=_prompt(section, where, "invalid_key_prompt", required=consent),
            ask_again=_prompt(section, where, "ask_again_prompt", required=consent),
        ),
        queue=queue,
        retention_months=_int(section, where, "retention_months", retention_months, 1, 120),
        callback_caller_id=caller_id,
        notice_retention_months=(
            None
            if "notice_retention_months" not in section
            else _int(section, where, "notice_retention_months", 0, 1, 120)
        ),
    )


def _purpose_rules(data: Mapping[str, Any]) -> tuple[PurposeRule, ...]:
    """The built-in purposes, each `[purposes.<name>]` added or replacing one by name."""
    raw = data.get("purposes", {})
    if not isinstance(raw, Mapping):
        raise ConfigError("purposes: must be a table of [purposes.<name>]")
    rules = {rule.name: rule for rule in defaults.DEFAULT_PURPOSES}
    bases = ", ".join(b.value for b in LegalBasis)
    for name, section in raw.items():
        where = f"purposes.{name}"
        try:
            purpose = Purpose(name)
        except ValueError:
            raise ConfigError(
                f"{where}: a purpose name is lowercase letters, digits, - and _"
            ) from None
        if not isinstance(section, Mapping):
            raise ConfigError(f"{where}: must be a table")
        for key in section:
            if key not in ("legal_bases", "description"):
                raise ConfigError(f"{where}.{key}: unknown key (known: description, legal_bases)")
        listed = section.get("legal_bases")
        if not isinstance(listed, list) or not listed:
            raise ConfigError(
                f"{where}.legal_bases: must be a non-empty list of legal bases ({bases})"
            )
        chosen: set[LegalBasis] = set()
        for value in listed:
            try:
                chosen.add(LegalBasis(value))
            except ValueError:
                raise ConfigError(
                    f"{where}.legal_bases: unknown legal basis {value!r} (known: {bases})"
                ) from None
        if not isinstance(section.get("description", ""), str):
            raise ConfigError(f"{where}.description: must be text")
        rules[purpose] = PurposeRule(purpose, frozenset(chosen))
    return tuple(rules.values())


def check_notices(policy: Policy, promises: Mapping[str, int | None]) -> None:
    """Each line's notice must promise the retention the line applies.

    `promises` is the prompt catalog's word: prompt id -> the months its text states (None:
    it states none). A notice the catalog does not know (a recording the operator put in
    place, not yet in the manifest) needs `notice_retention_months` in the line's table: the
    operator's declaration of what it says. Where both speak they must agree."""
    for line in policy.lines:
        notice = line.prompts.notice
        where = f"lines.{line.name}"
        known = notice in promises
        stated = promises.get(notice)
        declared = line.notice_retention_months
        if known and stated is None and declared is None:
            raise ConfigError(
                f"{where}: its notice {notice!r} states no retention period; a notice tells "
                "the caller how long the recording is kept (declare it with "
                "notice_retention_months if the text says it in words the catalog misses)"
            )
        if not known and declared is None:
            raise ConfigError(
                f"{where}: its notice {notice!r} is not in the prompt catalog, so what it "
                "promises is unknown: add it to prompts/ or declare notice_retention_months"
            )
        if stated is not None and declared is not None and stated != declared:
            raise ConfigError(
                f"{where}.notice_retention_months: {declared}, but its notice {notice!r} "
                f"says {stated} months"
            )
        promised = stated if stated is not None else declared
        if promised != line.retention_months:
            raise ConfigError(
                f"{where}: its notice {notice!r} promises {promised} months, but the line "
                f"keeps recordings {line.retention_months} months (retention_months)"
            )


def policy_from_mapping(data: Mapping[str, Any]) -> Policy:
    """A `Policy` from the policy sections of a parsed config; missing keys take the
    defaults of `flows.policy` (which equal POLICY.md)."""
    general = _table(
        data,
        "policy",
        {
            "retention_months",
            "withdrawal_working_days",
            "receipt_cutoff",
            "timezone",
            "sweep_interval_minutes",
            "country_code",
        },
    )
    consent = _table(
        data, "consent", {"digit_timeout_seconds", "no_key_retries", "invalid_key_limit"}
    )
    callbacks = _table(
        data, "callbacks", {"window_minutes", "overload_window_minutes", "default_line"}
    )
    timezone = general.get("timezone", defaults.TIMEZONE)
    if not isinstance(timezone, str):
        raise ConfigError(
            f'policy.timezone: must be a time zone name like "{defaults.TIMEZONE}", '
            f"not a {type(timezone).__name__}"
        )
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a name too long for the file system ZoneInfo looks it up in.
        raise ConfigError(f"policy.timezone: unknown time zone {timezone[:80]!r}") from None
    country_code = general.get("country_code", defaults.DEFAULT_COUNTRY)
    if not isinstance(country_code, str) or not re.fullmatch(r"[1-9]\d{0,2}", country_code):
        raise ConfigError(
            f'policy.country_code: must be 1-3 digits like "386", got {country_code!r}'
        )
    retention_months = _int(
        general, "policy", "retention_months", defaults.RETENTION_MONTHS, 1, 120
    )
    raw_lines = data.get("lines")
    if raw_lines is None:
        lines = tuple(
            replace(line, retention_months=retention_months) for line in defaults.DEFAULT_LINES
        )
    elif not isinstance(raw_lines, Mapping) or not raw_lines:
        raise ConfigError("lines: must be a table with at least one [lines.<name>]")
    else:
        lines = tuple(
            _line(name, section, country_code, retention_months)
            for name, section in raw_lines.items()
        )
    overload = callbacks.get("overload_window_minutes")
    if overload is not None:
        overload = _int(callbacks, "callbacks", "overload_window_minutes", 0, 1, 7 * 24 * 60)
    default_line = callbacks.get("default_line", "service" if raw_lines is None else None)
    if default_line is None:
        consent_lines = [line.name for line in lines if line.policy is LinePolicy.CONSENT]
        default_line = consent_lines[0] if consent_lines else lines[0].name
    if not isinstance(default_line, str):
        raise ConfigError(f"callbacks.default_line: must be a line name, got {default_line!r}")
    return Policy(
        purposes=_purpose_rules(data),
        lines=lines,
        retention_months=retention_months,
        withdrawal_working_days=_int(
            general, "policy", "withdrawal_working_days", defaults.WITHDRAWAL_WORKING_DAYS, 0, 30
        ),
        callback_window=timedelta(
            minutes=_int(callbacks, "callbacks", "window_minutes", 60, 1, 24 * 60)
        ),
        overload_window=None if overload is None else timedelta(minutes=overload),
        digit_timeout=timedelta(
            seconds=_int(
                consent,
                "consent",
                "digit_timeout_seconds",
                int(defaults.DIGIT_TIMEOUT.total_seconds()),
                1,
                60,
            )
        ),
        no_key_retries=_int(consent, "consent", "no_key_retries", defaults.NO_KEY_RETRIES, 0, 5),
        invalid_key_limit=_int(
            consent, "consent", "invalid_key_limit", defaults.INVALID_KEY_LIMIT, 0, 10
        ),
        receipt_cutoff=_clock(general, "policy", "receipt_cutoff"),
        timezone=str(timezone),
        sweep_interval=timedelta(
            minutes=_int(general, "policy", "sweep_interval_minutes", 60, 1, 24 * 60)
        ),
        country_code=country_code,
        callback_default_line=default_line,
    )
