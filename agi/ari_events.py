"""ARI events: what Asterisk's Swagger declares, and their decoding.

Pure: `decode_event` (= `parse_event` + `lift_event`) turns one WebSocket message into an
`AriEvent` or raises `ProtocolViolation` with a clear reason; `unwanted` tells, from the
text alone, an event the app does not read. The client (`agi.ari`) does the I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from flows.errors import ProtocolViolation
from flows.keys import KEYS
from flows.numbers import shown

# An event with a full channel snapshot is 1-2 kB; nothing Asterisk sends comes near this.
MAX_EVENT_BYTES = 256 * 1024
# Every `type` Asterisk's Swagger (events.json, models Message and Event) declares.
# fmt: off
EVENT_TYPES: Final = frozenset({
    "MissingParams", "DeviceStateChanged", "PlaybackStarted", "PlaybackContinuing",
    "PlaybackFinished", "RecordingStarted", "RecordingFinished", "RecordingFailed",
    "ApplicationMoveFailed", "ApplicationRegistered", "ApplicationUnregistered",
    "ApplicationReplaced", "BridgeCreated", "BridgeDestroyed", "BridgeMerged",
    "BridgeBlindTransfer", "BridgeAttendedTransfer", "BridgeVideoSourceChanged", "ChannelCreated",
    "ChannelDestroyed", "ChannelEnteredBridge", "ChannelLeftBridge", "ChannelStateChange",
    "ChannelDtmfReceived", "ChannelDialplan", "ChannelCallerId", "ChannelUserevent",
    "ChannelHangupRequest", "ChannelVarset", "ChannelToneDetected", "ChannelTalkingStarted",
    "ChannelTalkingFinished", "ChannelHold", "ChannelUnhold", "ContactStatusChange",
    "EndpointStateChange", "Dial", "StasisEnd", "StasisStart", "TextMessageReceived",
    "ChannelConnectedLine", "PeerStatusChange", "ChannelTransfer", "RESTResponse",
    "CallBroadcast", "CallClaimed",
})
# fmt: on

# Event types whose `channel` the Swagger marks required: one without it is malformed.
CHANNEL_REQUIRED: Final = frozenset(
    {"StasisStart", "StasisEnd", "ChannelDtmfReceived", "ChannelHangupRequest", "ChannelDestroyed"}
)


@dataclass(frozen=True, slots=True)
class AriEvent:
    """One decoded ARI event. Only the fields the app reads are lifted out; `raw` has all."""

    type: str
    channel_id: str | None
    playback_id: str | None
    digit: str | None
    variable: str | None
    value: str | None
    args: tuple[str, ...]
    caller_number: str | None = field(repr=False)  # raw and untrusted; kept out of reprs
    exten: str | None
    timestamp: str | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    # ChannelUserevent: the event's name and its fields (UserEvent(name,key:value,...)).
    eventname: str | None = None
    userevent: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class Reconnected:
    """Yielded by events() after the WebSocket came back; the app reconciles channels.

    `attempt` is how many connection attempts it took since the connection was lost (1: the
    first one succeeded). Also yielded when the very first connection needed retries."""

    attempt: int


def decode_event(message: str | bytes) -> AriEvent:
    """Pure. Raises flows.errors.ProtocolViolation (clear message) on bad JSON, a non-object,
    a missing/non-string `type`, wrong field types, an oversized message, a bad digit."""
    return lift_event(parse_event(message))


def parse_event(message: str | bytes) -> dict[str, Any]:
    """An event's JSON object, its `type` a non-empty string; the fields are checked by
    `lift_event`, which an app that ignores this type need not pay for."""
    size = message_size(message)
    if size > MAX_EVENT_BYTES:
        raise ProtocolViolation(
            f"ARI event of {size} bytes is over the limit of {MAX_EVENT_BYTES} bytes"
        )
    if isinstance(message, str):
        text = message
    else:
        try:
            text = message.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ProtocolViolation(
                f"ARI event is not UTF-8 (bad byte at {error.start})"
            ) from error
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ProtocolViolation(f"ARI event is not JSON: {error}") from error
    if not isinstance(data, dict):
        raise ProtocolViolation(f"ARI event is a JSON {_kind(data)}, not an object")
    kind = data.get("type")
    if not isinstance(kind, str) or not kind:
        raise ProtocolViolation(f"ARI event has no string 'type' (found {_kind(kind)})")
    return data


def lift_event(data: dict[str, Any]) -> AriEvent:
    """The fields an app reads, checked, out of a parsed event (`parse_event`)."""
    kind = str(data["type"])
    where = _Where(kind)

    channel = _object(data, "channel", where)
    if channel is None and kind in CHANNEL_REQUIRED:
        raise ProtocolViolation(f"{where} has no 'channel'")
    channel_id = caller_number = exten = None
    if channel is not None:
        channel_id = _required_text(channel, "id", where, "channel")
        caller = _object(channel, "caller", where, "channel")
        caller_number = None if caller is None else _text(caller, "number", where, "caller")
        dialplan = _object(channel, "dialplan", where, "channel")
        exten = None if dialplan is None else _text(dialplan, "exten", where, "dialplan")

    playback_id = None
    playback = _object(data, "playback", where)
    if playback is not None:
        playback_id = _required_text(playback, "id", where, "playback")
        target = _text(playback, "target_uri", where, "playback")
        # Playback events carry no channel; the target names it ("channel:<id>").
        if channel_id is None and target is not None and target.startswith("channel:"):
            channel_id = target.removeprefix("channel:") or None

    digit = _text(data, "digit", where)
    if kind == "ChannelDtmfReceived" and digit is None:
        raise ProtocolViolation(f"{where} has no 'digit'")
    if digit is not None and digit not in KEYS:
        # The bad value is not quoted: whatever it is, it may be someone's number.
        raise ProtocolViolation(
            f"{where} has a digit of {len(digit)} characters that is not one of 0-9 * # A-D"
        )

    raw_args = data.get("args")
    if raw_args is None:
        args: tuple[str, ...] = ()
    elif isinstance(raw_args, list) and all(isinstance(a, str) for a in raw_args):
        args = tuple(raw_args)
    else:
        raise ProtocolViolation(f"{where}: 'args' is not a list of strings")

    eventname = _text(data, "eventname", where)
    fields = _object(data, "userevent", where)
    if fields is not None and not all(isinstance(v, str) for v in fields.values()):
        raise ProtocolViolation(f"{where}: 'userevent' has a value that is not a string")

    return AriEvent(
        type=kind,
        channel_id=channel_id,
        playback_id=playback_id,
        digit=digit,
        variable=_text(data, "variable", where),
        value=_text(data, "value", where),
        args=args,
        caller_number=caller_number,
        exten=exten,
        timestamp=_text(data, "timestamp", where),
        raw=MappingProxyType(data),
        eventname=eventname,
        userevent={} if fields is None else MappingProxyType(fields),
    )


def _kind(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case dict():
            return "object"
        case _:
            return type(value).__name__


class _Where:
    """Where in an event a field sits, put into words only for an error: every event is
    checked, and building the words for each would cost more than the checks."""

    __slots__ = ("kind", "part")

    def __init__(self, kind: str, part: str = "") -> None:
        self.kind = kind
        self.part = part

    def __str__(self) -> str:
        return f"ARI {shown(self.kind, 40)} event" + (f", {self.part}" if self.part else "")


def _object(
    data: Mapping[str, Any], key: str, where: _Where, part: str = ""
) -> Mapping[str, Any] | None:
    value = data.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise ProtocolViolation(
        f"{_Where(where.kind, part)}: '{key}' is a {_kind(value)}, not an object"
    )


def _text(data: Mapping[str, Any], key: str, where: _Where, part: str = "") -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ProtocolViolation(
        f"{_Where(where.kind, part)}: '{key}' is a {_kind(value)}, not a string"
    )


def _required_text(data: Mapping[str, Any], key: str, where: _Where, part: str = "") -> str:
    value = _text(data, key, where, part)
    if not value:
        raise ProtocolViolation(f"{_Where(where.kind, part)}: '{key}' is missing or empty")
    return value


# An event's type and a ChannelVarset's variable, read off the text without parsing it. A
# key in JSON text is a quoted string no value can imitate (a quote inside a value is
# escaped), and no object an event nests (channel, playback, bridge) has either key.
_TYPE_FIELD = re.compile(r'"type"\s*:\s*"([A-Za-z]+)"')
_VARIABLE_FIELD = re.compile(r'"variable"\s*:\s*"([^"\\]*)"')


def unwanted(text: str, wanted: frozenset[str], variables: frozenset[str] | None) -> bool:
    """Whether an event can be dropped before it is parsed: a known type not `wanted`, or a
    ChannelVarset of a variable not in `variables`. Whatever the text does not show plainly
    is parsed and checked as usual."""
    kind = _TYPE_FIELD.search(text)
    if kind is None:
        return False
    name = kind.group(1)
    if name not in EVENT_TYPES or name == "ApplicationReplaced":
        return False
    if name not in wanted:
        return True
    if name == "ChannelVarset" and variables is not None:
        variable = _VARIABLE_FIELD.search(text)
        return variable is not None and variable.group(1) not in variables
    return False


def message_size(data: str | bytes) -> int:
    return len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
