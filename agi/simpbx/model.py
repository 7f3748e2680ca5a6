"""The simulated PBX's objects: channels, playbacks, Stasis applications, dialplan outcomes.

`Channel.snapshot()` is ARI's `Channel` model with the fields `ari-traces/` show; events and
REST answers use it as they are.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from agi.simpbx.audio import MonitorFile
from agi.simpbx.calls import CallerScript, CallResult

Json = dict[str, Any]
Sink = Callable[[Json], None]

CAUSE_TEXT: Mapping[int, str] = MappingProxyType(
    {
        1: "Unallocated (unassigned) number",
        16: "Normal Clearing",
        17: "User busy",
        18: "No user responding",
        19: "User alerting, no answer",
        21: "Call Rejected",
        26: "Answered elsewhere",
        28: "Invalid number format",
        31: "Normal, unspecified",
        34: "Circuit/channel congestion",
        38: "Network out of order",
        58: "Bearer capability not available",
        127: "Interworking, unspecified",
    }
)
NORMAL_CLEARING = 16
EXPLICIT_SOFT_HANGUP = 32  # what ChannelHangupRequest reports for DELETE /channels
DTMF_DURATION_MS = 100


def timestamp() -> str:
    """Asterisk's event time format: `2026-11-25T09:09:27.203+0000`."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}+0000"


@dataclass(frozen=True, slots=True)
class Jump:
    """Where the dialplan goes on: a GotoIf's label or a `continue`'s target."""

    context: str
    exten: str
    priority: int


NEXT = "next"
HANGUP = "hangup"
RETURN = "return"
Outcome = str | Jump


@dataclass(eq=False)
class Command:
    """One request queued to a channel in Stasis; `done` is set for requests whose REST
    answer waits (True: carried out, False: the channel left Stasis first)."""

    run: Callable[[], Awaitable[Jump | None]]
    done: asyncio.Future[bool] | None = None


@dataclass(eq=False)
class Channel:
    id: str
    name: str
    caller_name: str
    caller_number: str
    script: CallerScript
    created_at: float  # loop time
    creationtime: str
    state: str = "Ring"
    connected_name: str = ""
    connected_number: str = ""
    language: str = "en"
    context: str = ""
    exten: str = ""
    priority: int = 1
    app_name: str = ""
    app_data: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    stasis_app: str | None = None
    stasis_reached: bool = False
    pending: deque[Command] = field(default_factory=deque)
    signal: asyncio.Event = field(default_factory=asyncio.Event)  # a command or a hang-up
    hangup: asyncio.Event = field(default_factory=asyncio.Event)
    hangup_cause: int = NORMAL_CLEARING
    soft_request_sent: bool = False
    destroyed: bool = False
    outgoing_local: bool = False  # a Local;1 from originate shows AppDial2 when destroyed
    dialplan_started_at: float | None = None
    first_playback_at: float | None = None
    first_playback: asyncio.Event = field(default_factory=asyncio.Event)
    prompts: list[str] = field(default_factory=list)
    digits: list[str] = field(default_factory=list)
    dtmf: asyncio.Queue[str] = field(default_factory=asyncio.Queue)  # keys, for AGI
    monitor_file: str | None = None
    monitor: MonitorFile | None = None  # the file MixMonitor has open
    monitor_bytes: int | None = None  # its size once closed
    monitor_bridged_only: bool = False
    monitor_started_at: float | None = None
    bridge_peer: Channel | None = None
    bridge_started_at: float | None = None
    bridged_seconds: float = 0.0
    answered: bool = False
    dial_script: CallerScript | None = None  # how the party this channel dials behaves
    peer: Channel | None = None  # the channel its Dial() created
    ran_gosub: bool = False
    master: Channel | None = None  # a queue member's caller, for MASTER_CHANNEL()
    hangup_handlers: list[tuple[str, str, int]] = field(default_factory=list)
    finished: asyncio.Future[CallResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def snapshot(self) -> Json:
        """The ARI `Channel` model, with the fields the traces show."""
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "protocol_id": "",
            "caller": {"name": self.caller_name, "number": self.caller_number},
            "connected": {"name": self.connected_name, "number": self.connected_number},
            "accountcode": "",
            "dialplan": {
                "context": self.context,
                "exten": self.exten,
                "priority": self.priority,
                "app_name": self.app_name,
                "app_data": self.app_data,
            },
            "creationtime": self.creationtime,
            "language": self.language,
        }

    def locate(self, context: str, exten: str, priority: int, app: str, data: str) -> None:
        self.context, self.exten, self.priority = context, exten, priority
        self.app_name, self.app_data = app, data


@dataclass(eq=False)
class Playback:
    id: str
    channel: Channel
    medias: tuple[str, ...]
    language: str
    media_uri: str
    state: str = "queued"
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def json(self) -> Json:
        return {
            "id": self.id,
            "media_uri": self.media_uri,
            "target_uri": f"channel:{self.channel.id}",
            "language": self.language,
            "state": self.state,
        }


@dataclass(eq=False)
class StasisApp:
    """A Stasis application as Asterisk keeps it: registered by a WebSocket, active while
    one is connected, its subscriptions kept across a reconnect. An inactive application is
    destroyed only once it holds no subscription, and only when Asterisk next tidies its
    registry (`Switch.tidy_apps`); until then it is still listed."""

    name: str
    sink: Sink | None = None
    subscribe_all: bool = False
    interest: Counter[str] = field(default_factory=Counter)  # channel id -> subscriptions
    # PUT /applications/{name}/eventFilter (res/stasis/app.c): event types; an empty
    # `allowed` allows all, and `disallowed` wins over `allowed`.
    allowed: list[str] = field(default_factory=list)
    disallowed: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.sink is not None

    @property
    def finished(self) -> bool:
        """Inactive and subscribed to nothing (res/stasis/app.c `app_is_finished`)."""
        return self.sink is None and not any(n > 0 for n in self.interest.values())

    def wants(self, channels: Iterable[Channel]) -> bool:
        return self.subscribe_all or any(self.interest[c.id] > 0 for c in channels)

    def allows(self, kind: str) -> bool:
        return kind not in self.disallowed and (not self.allowed or kind in self.allowed)

    def json(self) -> Json:
        return {
            "name": self.name,
            "channel_ids": sorted(cid for cid, n in self.interest.items() if n > 0),
            "bridge_ids": [],
            "endpoint_ids": [],
            "device_names": [],
            "events_allowed": [{"type": t} for t in self.allowed],
            "events_disallowed": [{"type": t} for t in self.disallowed],
        }


async def any_set(events: Iterable[asyncio.Event], within: float | None) -> bool:
    """Wait until one of `events` is set (True) or `within` seconds pass (False)."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return bool(done)
