"""Retention and withdrawal deadlines in Slovenian calendar terms."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.errors import CallrecError
from flows.retention import (
    add_calendar_months,
    delete_after,
    is_working_day,
    next_working_day,
    receipt_day,
    withdrawal_deadline,
)

LJ = ZoneInfo("Europe/Ljubljana")
TZ = "Europe/Ljubljana"


def test_31_august_is_due_at_the_end_of_february() -> None:
    """A recording of 31 August is due on the last day of February, same wall time."""
    made = datetime(2026, 8, 31, 14, 30, tzinfo=LJ)
    due = delete_after(made, months=6, tz=TZ).astimezone(LJ)
    assert (due.date(), due.time()) == (date(2027, 2, 28), time(14, 30))
    leap = delete_after(datetime(2027, 8, 31, 9, 0, tzinfo=LJ), months=6, tz=TZ).astimezone(LJ)
    assert leap.date() == date(2028, 2, 29)


def test_naive_times_are_refused() -> None:
    """A time without a zone is ambiguous and refused."""
    with pytest.raises(CallrecError, match="time zone"):
        delete_after(datetime(2026, 1, 1), months=6, tz=TZ)


@pytest.mark.parametrize(
    ("received", "due"),
    [
        (datetime(2026, 4, 2, 10, 0, tzinfo=LJ), date(2026, 4, 10)),  # Easter Monday skipped
        (datetime(2025, 12, 24, 10, 0, tzinfo=LJ), date(2026, 1, 6)),  # 25, 26 Dec, 1, 2 Jan
        # Received on a non-working day: the five working days are those after that day.
        (datetime(2026, 3, 7, 11, 0, tzinfo=LJ), date(2026, 3, 13)),  # a Saturday
        (datetime(2026, 3, 8, 23, 59, tzinfo=LJ), date(2026, 3, 13)),  # a Sunday
        (datetime(2026, 4, 6, 9, 0, tzinfo=LJ), date(2026, 4, 13)),  # Easter Monday
        (datetime(2026, 5, 1, 9, 0, tzinfo=LJ), date(2026, 5, 8)),  # Labour Day (Friday)
        (datetime(2026, 6, 25, 9, 0, tzinfo=LJ), date(2026, 7, 2)),  # Statehood Day
        (datetime(2026, 2, 8, 9, 0, tzinfo=LJ), date(2026, 2, 13)),  # Prešeren Day (Sunday)
        # A run of holidays: 25, 26 Dec (Fri, Sat), 1, 2 Jan (Fri, Sat) 2026/27.
        (datetime(2026, 12, 25, 9, 0, tzinfo=LJ), date(2027, 1, 4)),
        (datetime(2026, 5, 2, 9, 0, tzinfo=LJ), date(2026, 5, 8)),  # 2 May, a Saturday
    ],
)
def test_worked_withdrawal_cases(received: datetime, due: date) -> None:
    """Worked dates: five Slovenian working days after the day of receipt, whatever day."""
    result = withdrawal_deadline(received, working_days=5, tz=TZ)
    assert result.due_on == due
    assert result.deadline.astimezone(LJ) == datetime.combine(
        due + timedelta(days=1), time(0), tzinfo=LJ
    )


def test_withdrawal_on_a_non_working_day_counts_from_that_day() -> None:
    """A withdrawal received on Easter Monday or a Saturday counts as received that day."""
    assert receipt_day(datetime(2026, 4, 6, 9, 0, tzinfo=LJ), tz=TZ) == date(2026, 4, 6)
    assert receipt_day(datetime(2026, 4, 4, 9, 0, tzinfo=LJ), tz=TZ) == date(2026, 4, 4)
    # A cut-off is about office hours on working days; it moves no weekend receipt later.
    saturday_night = datetime(2026, 4, 4, 22, 0, tzinfo=LJ)
    assert receipt_day(saturday_night, tz=TZ, cutoff=time(16)) == date(2026, 4, 4)


def test_email_after_hours_counts_the_same_day_unless_a_cutoff_is_set() -> None:
    """By default the hour never pushes the deadline later; a configured cut-off does."""
    late = datetime(2026, 4, 2, 22, 30, tzinfo=LJ)
    assert receipt_day(late, tz=TZ) == date(2026, 4, 2)
    assert receipt_day(late, tz=TZ, cutoff=time(16, 0)) == date(2026, 4, 3)
    assert receipt_day(datetime(2026, 4, 2, 15, 59, tzinfo=LJ), tz=TZ, cutoff=time(16)) == date(
        2026, 4, 2
    )


def test_utc_instant_is_judged_in_ljubljana_time() -> None:
    """23:30 UTC on a Friday is already Saturday in Ljubljana: received on Saturday."""
    friday_late_utc = datetime(2026, 11, 27, 23, 30, tzinfo=UTC)
    assert receipt_day(friday_late_utc, tz=TZ) == date(2026, 11, 28)
    assert withdrawal_deadline(friday_late_utc, working_days=5, tz=TZ).due_on == date(2026, 12, 4)


INSTANTS = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=500, deadline=None)
@given(INSTANTS)
def test_delete_after_is_never_early(made: datetime) -> None:
    """delete_after is never earlier than six calendar months after the recording."""
    due = delete_after(made, months=6, tz=TZ)
    local = made.astimezone(LJ)
    earliest_day = add_calendar_months(local.date(), 6)
    assert due.astimezone(LJ).date() == earliest_day
    assert due > made + timedelta(days=180)
    assert due - made < timedelta(days=185)


@settings(max_examples=500, deadline=None)
@given(INSTANTS)
def test_withdrawal_deadline_is_five_working_days_on(received: datetime) -> None:
    """The due day is a working day exactly five working days after the local day of
    receipt: never later than the fifth working day after the withdrawal arrived."""
    result = withdrawal_deadline(received, working_days=5, tz=TZ)
    assert is_working_day(result.due_on)
    assert result.received_on == received.astimezone(LJ).date()
    between = [
        result.received_on + timedelta(days=n)
        for n in range(1, (result.due_on - result.received_on).days + 1)
    ]
    assert sum(is_working_day(d) for d in between) == 5
    assert result.deadline > received


@settings(max_examples=300, deadline=None)
@given(INSTANTS, st.times())
def test_a_cutoff_delays_by_at_most_one_working_day(received: datetime, cutoff: time) -> None:
    """An operator's cut-off can move a deadline by one working day at most, never more."""
    plain = withdrawal_deadline(received, working_days=5, tz=TZ)
    cut = withdrawal_deadline(received, working_days=5, tz=TZ, cutoff=cutoff)
    assert cut.due_on in (plain.due_on, next_working_day(plain.due_on))
