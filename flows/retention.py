"""When a recording must be gone: retention and withdrawal deadlines.

Both notices promise six months from the recording's creation (each line states its own
period: `Line.retention_months`, which its notice must promise); a month is a calendar
month in Europe/Ljubljana, so a recording of 31 August is due at the same wall-clock time
on the last day of February. A withdrawal is honoured within five Slovenian working days
(Monday to Friday, less the public holidays of the `holidays` package's Slovenian
calendar, which is maintained upstream rather than hand-written here).

When is a withdrawal "received"? On the day it arrives, whatever the hour and whatever
the day: the five working days are counted after that day, so a message that arrives on a
Saturday, a Sunday or a public holiday is due on the fifth working day that follows it
(Saturday 7 March 2026 -> Friday 13 March), not on the fifth after the next working day.
This is the earliest correct reading, and the deadline in the ledger is the legal one the
DPO answers for. Only an operator's explicit receipt cut-off moves a message that arrives
on a working day after that hour to the next working day. The deadline is the end (24:00
local time) of the fifth working day after the day of receipt.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

from flows.errors import CallrecError
from flows.policy import LegalBasis, Line, Policy, Purpose


def _aware(moment: datetime, what: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise CallrecError(f"{what} must carry a time zone, got naive {moment.isoformat()}")


def add_calendar_months(day: date, months: int) -> date:
    """`day` plus `months` calendar months, clamped to the month's last day."""
    index = day.year * 12 + (day.month - 1) + months
    year, month0 = divmod(index, 12)
    last = calendar.monthrange(year, month0 + 1)[1]
    return date(year, month0 + 1, min(day.day, last))


def delete_after(made_at: datetime, *, months: int, tz: str) -> datetime:
    """The moment (UTC) from which a recording made at `made_at` must be deleted.

    Never earlier than `months` calendar months after `made_at`: where the local wall
    time does not exist or is ambiguous on the due day (DST changes), the later instant
    is taken.
    """
    _aware(made_at, "made_at")
    zone = ZoneInfo(tz)
    local = made_at.astimezone(zone)
    due_day = add_calendar_months(local.date(), months)
    wall = local.time().replace(tzinfo=None)
    candidates = [
        datetime.combine(due_day, wall, tzinfo=zone).replace(fold=fold).astimezone(UTC)
        for fold in (0, 1)
    ]
    return max(candidates)


@dataclass(frozen=True, slots=True)
class Keeping:
    """What a conversation's line decides for its data, fixed when the decision is taken:
    a call in progress keeps it whatever the configuration becomes."""

    line: str  # the conversation's line (a linked callback: the missed call's)
    purposes: frozenset[Purpose]  # what its recording may serve
    delete_after: datetime  # UTC: its recording goes then, and every call's numbers with it


def keeping(line: Line, decided_at: datetime, *, tz: str) -> Keeping:
    """When this conversation's data is deleted, and what it may serve: the line's
    retention counted from the decision (the recording's creation), the line's purposes."""
    return Keeping(
        line=line.name,
        purposes=line.purposes,
        delete_after=delete_after(decided_at, months=line.retention_months, tz=tz),
    )


def keeping_by_name(
    policy: Policy, line_name: str | None, basis: LegalBasis, decided_at: datetime
) -> Keeping:
    """The `Keeping` of a decision that did not carry one (a ledger written before lines
    were data, or a tool that commits decisions by hand): the named line of `policy`, else
    the policy's retention and the purposes the basis may serve."""
    line = policy.line_named(line_name or "")
    if line is not None:
        return keeping(line, decided_at, tz=policy.timezone)
    return Keeping(
        line=line_name or "",
        purposes=policy.allowed(basis),
        delete_after=delete_after(decided_at, months=policy.retention_months, tz=policy.timezone),
    )


def numbers_deleted_after(line: Line, started_at: datetime, *, tz: str) -> datetime:
    """When a call's numbers go if no decision moves the date: its line's retention from
    the call's start (a decision later sets it to its conversation's `Keeping`)."""
    return delete_after(started_at, months=line.retention_months, tz=tz)


@lru_cache(maxsize=64)
def _holidays_of(year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays("SI", years=year).keys())


def is_working_day(day: date) -> bool:
    """Monday to Friday and not a Slovenian public holiday."""
    return day.weekday() < 5 and day not in _holidays_of(day.year)


def next_working_day(day: date) -> date:
    day += timedelta(days=1)
    while not is_working_day(day):
        day += timedelta(days=1)
    return day


def add_working_days(day: date, count: int) -> date:
    """The `count`-th working day after `day` (`day` itself is not counted)."""
    for _ in range(count):
        day = next_working_day(day)
    return day


def receipt_day(received_at: datetime, *, tz: str, cutoff: time | None = None) -> date:
    """The day a withdrawal counts as received, after which its working days are counted
    (see the module docstring): the local day of arrival, any kind of day, unless it came
    on a working day at or after the operator's cut-off."""
    _aware(received_at, "received_at")
    local = received_at.astimezone(ZoneInfo(tz))
    day = local.date()
    if cutoff is not None and is_working_day(day) and local.time() >= cutoff:
        return next_working_day(day)
    return day


@dataclass(frozen=True, slots=True)
class WithdrawalDeadline:
    received_on: date  # the day the withdrawal counts as received; working days follow it
    due_on: date  # the last working day on which the deletion may happen
    deadline: datetime  # UTC: 24:00 local time at the end of `due_on`


def withdrawal_deadline(
    received_at: datetime, *, working_days: int, tz: str, cutoff: time | None = None
) -> WithdrawalDeadline:
    received_on = receipt_day(received_at, tz=tz, cutoff=cutoff)
    due_on = add_working_days(received_on, working_days)
    end_local = datetime.combine(due_on + timedelta(days=1), time(0), tzinfo=ZoneInfo(tz))
    return WithdrawalDeadline(received_on, due_on, end_local.astimezone(UTC))
