"""One rule for times on the command line: text shows the policy's zone (Europe/Ljubljana by
default) with its offset, `2026-03-07 14:05:00 +01:00`; JSON shows ISO 8601 with its offset
(`callrec.cli.to_json`). A time typed in must be a moment, with its offset."""

from __future__ import annotations

from datetime import date, datetime
from functools import cache
from zoneinfo import ZoneInfo

from flows.policy import Policy

DEFAULT_ZONE = Policy().timezone
MOMENT_EXAMPLE = "2026-03-01T00:00:00+01:00"


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local(moment: datetime | None, tz: str = DEFAULT_ZONE) -> str:
    """`moment` for people: seconds, in `tz`, with the offset that held there then."""
    if moment is None:
        return ""
    there = moment.astimezone(_zone(tz))
    offset = there.strftime("%z")  # +0100
    return f"{there:%Y-%m-%d %H:%M:%S} {offset[:3]}:{offset[3:]}"


def plain_date(text: str) -> bool:
    """Whether `text` is a calendar date with no time of day (2026-03-01)."""
    try:
        date.fromisoformat(text.strip())
    except ValueError:
        return False
    return "T" not in text and " " not in text.strip() and len(text.strip()) <= 10
