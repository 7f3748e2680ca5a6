"""What the call adapters need from the outside world, as Protocols.

`agi/` never imports a concrete store, broker or clock: `callrec/` wires them in, and the
tests pass fakes that mypy checks against these same Protocols.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Protocol

from flows.events import Event


class Clock(Protocol):
    def now(self) -> datetime:
        """Timezone-aware UTC."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class OffsetClock:
    """The system clock moved by an adjustable offset: `demo` and `replay` start at a chosen
    instant and jump forward (a callback 40 minutes later) without waiting."""

    def __init__(self, start: datetime | None = None) -> None:
        self._offset = timedelta(0) if start is None else start - datetime.now(UTC)

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def advance(self, delta: timedelta) -> None:
        self._offset += delta


Payload = Mapping[str, str | int | float | bool | None]


class EventSink(Protocol):
    """Publishes what happened (MQTT in production). Never blocks, never raises."""

    def publish(self, kind: str, payload: Payload) -> None: ...


class ChannelPort(Protocol):
    """One call's channel, as a flow's commands need it. ARI and FastAGI each implement it.

    Each method returns the events its execution produced at once: FastAGI's `STREAM FILE`
    returns the key pressed or the prompt's end, ARI returns nothing here because its events
    arrive on the WebSocket. `flows.errors.ChannelGone` means the caller is gone; any other
    `AsteriskError` means the channel cannot be driven.
    """

    async def answer(self) -> list[Event]: ...

    async def play(self, prompt: str, *, barge_in: bool, token: int) -> list[Event]: ...

    async def stop_prompt(self, token: int) -> list[Event]: ...

    async def wait_for_digit(self, limit: timedelta, token: int) -> list[Event]: ...

    async def cancel_wait(self, token: int) -> list[Event]: ...

    async def start_recording(self, call_id: str, file: str) -> list[Event]:
        """Make the dialplan (ARI) or the AGI session (FastAGI) start MixMonitor on `file`."""

    async def skip_recording(self, call_id: str) -> list[Event]: ...

    async def notice_callee(self, call_id: str, line: str) -> list[Event]: ...

    async def show_caller_id(self, number: str) -> None:
        """CALLREC_CALLBACK_CID: the caller ID the callback's customer is shown."""
        ...

    async def continue_in_dialplan(self) -> list[Event]: ...

    async def hangup(self) -> list[Event]: ...
