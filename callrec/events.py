"""What happened, published as MQTT events for dashboards and other systems.

Theory of operation. `publish()` is called from inside a call's handling, so it must never
wait and never raise: it checks the payload, wraps it in the envelope, serialises it and puts
the bytes on a bounded in-memory queue, all synchronously. One background task owns the
broker connection: it connects (retrying with capped exponential backoff and jitter), takes
events from the queue in order and publishes each with QoS 1, waiting for the broker's
PUBACK before taking the next one. While it waits for a connection the events stay queued;
when the queue is full the oldest event is dropped and counted, because the newest events
describe the calls still in progress. An event whose PUBACK was lost with the connection is
sent again after reconnecting (QoS 1 is at-least-once: subscribers may see a duplicate).

Topics are `<prefix>/<kind>` (`callrec/recording/stored`). Payloads are JSON objects:
`{"schema": 1, "kind": "recording/stored", "at": "<ISO-8601 UTC>", ...fields}`.

No phone number may leave through events: callers pass the keyed pseudonym
(`caller_pseudonym`) instead. As a second line of defence every payload is checked, and one
with a key named like a number (`caller`, `number`, `dialed`, `phone`, ...) or a text that
looks like an international number (`+` and eight or more digits) is dropped, counted and
logged by key name only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import json
import logging
import math
import random
import re
import ssl
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import aiomqtt

from flows.errors import EventsError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # bumped when a field changes meaning or goes away; additions keep it
QOS = 1  # at least once: an event lost with a connection is sent again
DEFAULT_PREFIX = "callrec"
DEFAULT_QUEUE_SIZE = 1000  # hours of a busy line's events; memory stays bounded
DEFAULT_BACKOFF_MAX = 30.0  # seconds: a long broker outage costs one attempt per half minute
INITIAL_BACKOFF = 0.1  # seconds: a broker restarted on the same host is back this soon
BROKER_TIMEOUT = 10.0  # seconds for CONNACK, PUBACK and DISCONNECT before the link is dead
DISCONNECT_GRACE = 1.0  # seconds stop() lets a cancelled sender say DISCONNECT
KEEPALIVE = 30  # seconds: a silently vanished broker is noticed within 1.5 x this
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}  # IANA-registered MQTT ports
RESERVED_KEYS = frozenset({"schema", "kind", "event_id"})  # the envelope's own fields
# Key fragments that name a phone number; `caller_pseudonym` is the allowed way to say who.
NUMBER_KEY_FRAGMENTS = ("caller", "callee", "number", "dialed", "phone", "msisdn")
PSEUDONYM_SUFFIX = "_pseudonym"
# `+` and at least eight digits, optionally grouped by spaces or hyphens: E.164 has 8 to 15,
# and a longer run after a `+` is no less likely to be a number.
_E164_LIKE = re.compile(r"\+[0-9](?:[ -]?[0-9]){7,}")

Value = str | int | float | bool | None
Payload = Mapping[str, Value]


class EventKind(enum.StrEnum):
    """What happened; the value is the topic suffix."""

    DECISION = "decision"
    RECORDING_STARTED = "recording/started"
    RECORDING_SKIPPED = "recording/skipped"
    RECORDING_STORED = "recording/stored"
    RECORDING_DELETED = "recording/deleted"
    CALLBACK_DUE = "callback/due"
    CALLBACK_OVERDUE = "callback/overdue"
    WITHDRAWAL_RECEIVED = "withdrawal/received"
    WITHDRAWAL_COMPLETED = "withdrawal/completed"
    SWEEP_FINISHED = "sweep/finished"


class EventSink(Protocol):
    """Publishes what happened. Never blocks, never raises.

    `kind` is an `EventKind` or its value as text (the call adapters, which may not import
    this package, pass the text); anything else is dropped and logged.
    """

    def publish(self, kind: EventKind | str, payload: Payload) -> None: ...


class RejectedEvent(EventsError):
    """An event that must not be published; the message names the key, never the value.
    `publish()` never lets it out: it drops, counts and logs the event instead."""


def check(kind: EventKind | str, payload: Payload) -> EventKind:
    """Return `kind` as an `EventKind` if the event may be published, else raise
    `RejectedEvent` saying why (without repeating any value)."""
    try:
        event_kind = EventKind(kind)
    except ValueError:
        raise RejectedEvent(f"unknown event kind {str(kind)[:40]!r}") from None
    for key, value in payload.items():
        if not isinstance(key, str):
            raise RejectedEvent(f"a key is {type(key).__name__}, not text")
        if _E164_LIKE.search(key):
            raise RejectedEvent("a key looks like a phone number")
        if key in RESERVED_KEYS:
            raise RejectedEvent(f"key {key!r} belongs to the envelope")
        lowered = key.lower()
        if not lowered.endswith(PSEUDONYM_SUFFIX) and any(
            fragment in lowered for fragment in NUMBER_KEY_FRAGMENTS
        ):
            raise RejectedEvent(
                f"key {key!r} is named like a phone number; pass `caller_pseudonym` instead"
            )
        if value is not None and not isinstance(value, str | int | float | bool):
            raise RejectedEvent(f"key {key!r} holds {type(value).__name__}, not a JSON scalar")
        if isinstance(value, str) and _E164_LIKE.search(value):
            raise RejectedEvent(f"key {key!r} holds text that looks like a phone number")
        if isinstance(value, float) and not math.isfinite(value):
            raise RejectedEvent(f"key {key!r} holds {value}, which JSON cannot carry")
    at = payload.get("at")
    if at is not None and not isinstance(at, str):
        raise RejectedEvent("key 'at' must be ISO-8601 text")
    return event_kind


def envelope(kind: EventKind, payload: Payload, now: datetime) -> dict[str, Value]:
    """The published JSON object: schema, kind and time first, then the caller's fields.
    `at` is the caller's when given (the moment it happened), else `now`."""
    body: dict[str, Value] = {
        "schema": SCHEMA_VERSION,
        "event_id": uuid.uuid4().hex,  # QoS 1 is at-least-once: subscribers de-duplicate on it
        "kind": kind.value,
        "at": now.astimezone(UTC).isoformat(),
    }
    body.update(payload)
    return body


def encode(body: Mapping[str, Value]) -> bytes:
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


class NullEvents:
    """An `EventSink` for a controller without a broker: every event is dropped unseen."""

    def publish(self, kind: EventKind | str, payload: Payload) -> None:
        return None


class MemoryEvents:
    """An `EventSink` that keeps events in memory, for tests and the simulated runs.

    It applies the same checks as `MqttEvents`: an event that would be dropped there is kept
    in `rejected` with the reason instead of in `events`, so a test sees a leaked number.
    """

    def __init__(self) -> None:
        self.events: list[tuple[EventKind, dict[str, Value]]] = []
        self.rejected: list[tuple[str, str]] = []  # (kind as given, reason)

    def publish(self, kind: EventKind | str, payload: Payload) -> None:
        try:
            event_kind = check(kind, payload)
        except RejectedEvent as error:
            self.rejected.append((str(kind), str(error)))
            return
        self.events.append((event_kind, dict(payload)))

    def of(self, kind: EventKind) -> list[dict[str, Value]]:
        """The payloads published with `kind`, oldest first."""
        return [payload for event_kind, payload in self.events if event_kind is kind]


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where and as whom to connect; `repr` leaves the password out."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    def __repr__(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}@" if self.username else ""
        return f"BrokerAddress({scheme}://{user}{self.host}:{self.port})"

    @property
    def where(self) -> str:
        """Host and port for log lines (no user, no password)."""
        return f"{self.host}:{self.port}"


def parse_url(url: str, password_file: Path | None = None) -> BrokerAddress:
    """`mqtt://[user[:password]@]host[:port]` or `mqtts://...` as a `BrokerAddress`; the
    password may instead come from `password_file` (its first line). Raises `EventsError`
    naming what is wrong; the message never repeats a password."""
    if not isinstance(url, str):
        raise EventsError(f"mqtt url: must be text, not {type(url).__name__}")
    try:
        parts = urlsplit(url.strip())
    except ValueError as error:  # "mqtt://[::1": the URL may hold a password, so not shown
        raise EventsError(f"mqtt url: not a usable URL ({error})") from None
    scheme = parts.scheme.lower()
    shown = _without_password(url)
    if scheme not in DEFAULT_PORTS:
        raise EventsError(f"mqtt url {shown}: must start with mqtt:// or mqtts://")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise EventsError(f"mqtt url {shown}: only user, password, host and port are allowed")
    host = parts.hostname
    if not host:
        raise EventsError(f"mqtt url {shown}: no host")
    try:
        host.encode("idna")
    except UnicodeError:
        raise EventsError(f"mqtt url {shown}: {host!r} is not a valid host name") from None
    if any(char.isspace() for char in host):
        raise EventsError(f"mqtt url {shown}: a host name has no spaces")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise EventsError(f"mqtt url {shown}: the port must be a number 1-65535") from None
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password_file is not None:
        if password is not None:
            raise EventsError(
                f"mqtt url {shown}: a password is in the url and in {password_file}; give one"
            )
        password = _read_password(password_file)
    if password is not None and username is None:
        raise EventsError(f"mqtt url {shown}: a password needs a user name (mqtt://user@host)")
    return BrokerAddress(host, port, scheme == "mqtts", username, password)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return repr(url)
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    return repr(parts._replace(netloc=f"{name}:***@{host}").geturl())


def _read_password(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise EventsError(f"mqtt password file {path}: cannot read: {error.strerror}") from None
    except UnicodeDecodeError:
        raise EventsError(f"mqtt password file {path}: not UTF-8 text") from None
    lines = text.splitlines()
    password = lines[0].strip() if lines else ""
    if not password:
        raise EventsError(f"mqtt password file {path}: empty")
    return password


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix.strip("/"):
        raise EventsError("mqtt prefix: must be non-empty text such as 'callrec'")
    if any(char in prefix for char in "+#\0") or prefix.startswith("$"):
        raise EventsError(
            f"mqtt prefix {prefix!r}: no wildcards (+ #), NUL or leading $ in a topic"
        )
    return prefix.strip("/")


class MqttEvents:
    """An `EventSink` that publishes to an MQTT broker from a background task.

    `publish()` only enqueues; `start()` launches the task, `stop()` drains the queue for at
    most `drain_timeout` seconds and disconnects. `dropped` counts every event that will
    never be delivered: rejected by the checks, pushed out of a full queue, or still queued
    when `stop()` gave up. `published` counts events the broker acknowledged.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        client_id: str | None = None,
        password_file: Path | None = None,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
    ) -> None:
        self._address = parse_url(url, password_file)
        self._prefix = _check_prefix(prefix)
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise EventsError(f"mqtt queue_size: must be a whole number >= 1, got {queue_size!r}")
        if not (isinstance(backoff_max, int | float) and backoff_max >= INITIAL_BACKOFF):
            raise EventsError(
                f"mqtt backoff_max: must be at least {INITIAL_BACKOFF} s, got {backoff_max!r}"
            )
        self._client_id = client_id
        self._backoff_max = float(backoff_max)
        self._queue: collections.deque[tuple[str, bytes]] = collections.deque(maxlen=queue_size)
        self._in_flight: tuple[str, bytes] | None = None  # taken from the queue, not yet acked
        self._wake = asyncio.Event()  # set by publish() and stop() to rouse the sender
        self._stop_requested = asyncio.Event()  # cuts a reconnect backoff short
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._closed = False
        self._connected = False
        self._dropped = 0
        self._rejected = 0
        self._published = 0
        self._overflowing = False  # a full queue is logged once per episode, not per event

    def __repr__(self) -> str:
        return f"MqttEvents({self._address!r}, prefix={self._prefix!r})"

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def rejected(self) -> int:
        """The part of `dropped` refused by the checks (a phone number, a bad field)."""
        return self._rejected

    @property
    def published(self) -> int:
        return self._published

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def queued(self) -> int:
        """Events accepted and not yet acknowledged by the broker."""
        return len(self._queue) + (self._in_flight is not None)

    def topic(self, kind: EventKind) -> str:
        return f"{self._prefix}/{kind.value}"

    def publish(self, kind: EventKind | str, payload: Payload) -> None:
        try:
            event_kind = check(kind, payload)
            message = encode(envelope(event_kind, payload, datetime.now(UTC)))
        except RejectedEvent as error:
            self._reject(kind, str(error))
            return
        except Exception as error:  # an odd Mapping must not break the call that reports it
            self._reject(kind, f"cannot be encoded ({type(error).__name__})")
            return
        if self._closed:
            self._dropped += 1
            log.warning("event %s dropped: events are stopped", event_kind.value)
            return
        if len(self._queue) == self._queue.maxlen:
            self._dropped += 1  # the deque pushes its oldest entry out on append
            if not self._overflowing:
                self._overflowing = True
                log.warning(
                    "event queue full (%d) while the broker at %s is %s: dropping the oldest",
                    self._queue.maxlen,
                    self._address.where,
                    "slow" if self._connected else "unreachable",
                )
        self._queue.append((self.topic(event_kind), message))
        self._wake.set()

    def _reject(self, kind: EventKind | str, reason: str) -> None:
        self._dropped += 1
        self._rejected += 1
        log.error("event %s dropped: %s", str(kind)[:40], reason)

    async def start(self) -> None:
        """Start the background task and return at once, whether or not the broker is up."""
        if self._closed:
            raise EventsError("mqtt events: stopped events cannot be started again")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="callrec-mqtt-events")

    async def stop(self, *, drain_timeout: float = 2.0) -> None:
        """While connected, deliver what is queued for at most `drain_timeout` seconds, then
        disconnect; without a connection, end at once. Undelivered events count as dropped,
        and later `publish()` calls are dropped too."""
        self._closed = True
        self._stopping = True
        self._wake.set()
        self._stop_requested.set()
        task, self._task = self._task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=max(drain_timeout, 0.0))
            if not done:
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=DISCONNECT_GRACE)
            if not done:
                # A second cancel interrupts a graceful DISCONNECT the broker never answers.
                task.cancel()
                await asyncio.wait({task})
        left = self.queued
        if left:
            self._dropped += left
            self._queue.clear()
            self._in_flight = None
            log.warning(
                "%d events not delivered to the broker at %s before stopping",
                left,
                self._address.where,
            )
        self._connected = False

    async def _run(self) -> None:
        delay = INITIAL_BACKOFF
        while True:
            # Jitter keeps controllers that lost the same broker from reconnecting in step.
            pause = delay * random.uniform(0.5, 1.0)  # noqa: S311 (timing, not a secret)
            try:
                async with contextlib.AsyncExitStack() as stack:
                    client = await self._connect(stack)
                    self._connected = True
                    delay = INITIAL_BACKOFF
                    log.info("events: connected to the broker at %s", self._address.where)
                    await self._pump(client)
                    return
            except* aiomqtt.MqttError as group:
                was_connected = self._connected
                self._connected = False
                reason = "; ".join(str(error) for error in group.exceptions)
                if was_connected:
                    log.warning("events: lost the broker at %s: %s", self._address.where, reason)
                else:
                    log.warning(
                        "events: cannot reach the broker at %s (%s); retrying in %.1f s",
                        self._address.where,
                        reason,
                        pause,
                    )
            except* Exception:
                # A fault outside MQTT (a bug, a TLS setup error) must not end the task for
                # good: the queue would fill silently while calls go on.
                log.exception("events: unexpected failure; retrying in %.1f s", pause)
            finally:
                self._connected = False
            # Stopping without a broker: what is left is counted by stop(), not retried.
            if self._stopping:
                return
            await self._backoff(pause)
            if self._stopping:
                return
            delay = min(delay * 2, self._backoff_max)

    async def _backoff(self, seconds: float) -> None:
        """Wait before the next attempt; `stop()` cuts the wait short, publishing does not."""
        try:
            await asyncio.wait_for(self._stop_requested.wait(), seconds)
        except TimeoutError:
            return

    async def _connect(self, stack: contextlib.AsyncExitStack) -> aiomqtt.Client:
        """A connected client, closed with `stack`. The attempt gives up after BROKER_TIMEOUT
        however it stalls: aiomqtt bounds its wait for CONNACK, not the TCP connect it runs
        in a thread."""
        try:
            async with asyncio.timeout(BROKER_TIMEOUT):
                return await stack.enter_async_context(self._client())
        except TimeoutError:
            raise aiomqtt.MqttError(f"no connection within {BROKER_TIMEOUT:g} s") from None

    def _client(self) -> aiomqtt.Client:
        address = self._address
        return aiomqtt.Client(
            address.host,
            address.port,
            username=address.username,
            password=address.password,
            identifier=self._client_id,
            logger=logging.getLogger(f"{__name__}.mqtt"),
            timeout=BROKER_TIMEOUT,
            keepalive=KEEPALIVE,
            tls_context=ssl.create_default_context() if address.tls else None,
        )

    async def _pump(self, client: aiomqtt.Client) -> None:
        """Send queued events until stopped with nothing left; a lost connection ends it
        with `MqttError` (through the TaskGroup's exception group)."""
        async with asyncio.TaskGroup() as group:
            watcher = group.create_task(self._watch(client))
            await self._send_all(client)
            watcher.cancel()

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        # Nothing is subscribed, so the message iterator only ever ends, with MqttError, when
        # the connection drops: that is how an idle sink learns that the broker went away.
        async for _ in client.messages:
            pass

    async def _send_all(self, client: aiomqtt.Client) -> None:
        while True:
            if self._in_flight is None:
                if not self._queue:
                    if self._stopping:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                self._in_flight = self._queue.popleft()
            topic, message = self._in_flight
            await client.publish(topic, message, qos=QOS)
            self._in_flight = None
            self._published += 1
            self._overflowing = False
