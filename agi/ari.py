"""A small, typed ARI client: REST calls and the events WebSocket.

Theory of operation. Every REST call goes through `AriClient._request`, which builds the URL
from a row of `ENDPOINTS` (so the table a test checks against Asterisk's Swagger is the table
the code uses), percent-encodes every path part and parameter, sends the credentials as an
HTTP Basic header (never in a URL), and maps Asterisk's answers at this boundary: 404 is
`ChannelGone` (the caller hung up; for a subscription Asterisk says 422), any other failure,
time-out or unreachable server is an `AsteriskError` with the HTTP status and the channel as
call context. Stopping a finished playback or hanging up a gone channel is quietly done.

`AriClient.events` holds one WebSocket to `/ari/events?app=<app>`, opened when iteration
starts (Asterisk registers the app only while it is open). Messages are decoded by the pure
`agi.ari_events.decode_event`; a message that does not decode is logged by size and reason
(never its content, which carries caller numbers) and skipped, so one bad message costs one
event, not the connection. When the socket closes or fails the iterator reconnects with capped
exponential backoff and jitter, also after connections that close at once, so a broken
server never makes it loop hot, and yields `Reconnected` so the app can reconcile the
channels whose events it may have missed. A heartbeat notices half-open connections.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import random
import re
import ssl as ssl_module
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from yarl import URL

from agi.ari_events import (
    EVENT_TYPES,
    AriEvent,
    Reconnected,
    lift_event,
    message_size,
    parse_event,
    unwanted,
)
from flows.errors import AsteriskError, ChannelGone, ConfigError, ProtocolViolation
from flows.numbers import shown

log = logging.getLogger("callrec.ari")

# Frames up to this size are read and dropped by `decode_event`, keeping the socket and the
# events after it; only larger ones make aiohttp close the connection.
MAX_FRAME_BYTES = 4 * 1024 * 1024
DEFAULT_HEARTBEAT = 20.0  # seconds between pings: a half-open TCP connection shows in < 30 s
UNKNOWN_TYPES_LOGGED = 64  # distinct unknown event types named in the log, then silence

RELEASE_POLL = 2.0  # seconds between looks whether another client let go of our app
# Requests in flight at once. Asterisk serves each HTTP connection with a thread and refuses
# connections past http.conf's `sessionlimit` (asterisk-conf/http.conf: 100) by closing them
# unanswered; the events WebSocket, the CLI and other ARI clients share that limit. A fifth
# of it keeps the controller well clear, and more connections do not make a busy Asterisk
# answer sooner: they only queue inside it instead of here, where urgent work can go first.
DEFAULT_MAX_CONNECTIONS = 20
ANSWER_SMOOTHING = 0.2  # weight of the latest request in the smoothed time per request
REFUSED_RETRIES = 2  # a connection closed before any answer is tried again this often
REFUSED_PAUSE = 0.05  # seconds before the first such retry, doubling

# (method, path template as in the Swagger, query/body parameters the client may send).
ENDPOINTS: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("POST", "/channels/{channelId}/answer", frozenset()),
    ("POST", "/channels/{channelId}/play", frozenset({"media", "lang"})),
    ("POST", "/channels/{channelId}/play/{playbackId}", frozenset({"media", "lang"})),
    ("DELETE", "/playbacks/{playbackId}", frozenset()),
    ("POST", "/applications/{applicationName}/subscription", frozenset({"eventSource"})),
    ("DELETE", "/applications/{applicationName}/subscription", frozenset({"eventSource"})),
    ("POST", "/channels/{channelId}/variable", frozenset({"variable", "value"})),
    ("GET", "/channels/{channelId}/variable", frozenset({"variable"})),
    ("POST", "/channels/{channelId}/continue", frozenset({"context", "extension", "priority"})),
    ("DELETE", "/channels/{channelId}", frozenset({"reason"})),
    ("GET", "/channels", frozenset()),
    (
        "POST",
        "/channels",
        frozenset(
            {"endpoint", "extension", "context", "priority", "callerId", "app", "appArgs"}
            | {"timeout", "variables"}
        ),
    ),
    ("GET", "/asterisk/info", frozenset()),
    ("GET", "/asterisk/variable", frozenset({"variable"})),
    ("POST", "/asterisk/variable", frozenset({"variable", "value"})),
    ("GET", "/applications/{applicationName}", frozenset()),
    ("PUT", "/applications/{applicationName}/eventFilter", frozenset({"filter"})),
    ("GET", "/events", frozenset({"app", "subscribeAll"})),
)
_ALLOWED: Final = {(method, path): params for method, path, params in ENDPOINTS}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")

_Param = str | int | bool | None


def _query_text(value: str | int | bool) -> str:
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    return str(value)


def _error_message(body: bytes) -> str:
    """Asterisk's `{"message": ...}`, or the start of whatever else came back."""
    text = body.decode("utf-8", "replace")
    with contextlib.suppress(ValueError, RecursionError):
        data = json.loads(text)
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return str(data["message"])
    return text


class _Gate:
    """At most `limit` requests in flight; waiting urgent ones (the decision path: the
    variables and `continue` that hand a caller on) go before normal ones (answer, play), so
    that a caller who already decided is not held behind the prompts of new calls."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._urgent) + len(self._normal)

    async def acquire(self, urgent: bool) -> None:
        if self.active < self.limit and not self._urgent and not self._normal:
            self.active += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._urgent if urgent else self._normal
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over as we were cancelled: pass it on
            else:
                queue.remove(waiter)
            raise

    def release(self) -> None:
        for queue in (self._urgent, self._normal):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the slot goes straight to the waiter
                    return
        self.active -= 1


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    data: Any  # decoded JSON, or None for an empty body
    message: str  # Asterisk's error message for a status the caller accepted, else ""


class AriClient:
    """ARI over aiohttp. One instance per Asterisk; `close()` (or `async with`) when done."""

    def __init__(
        self,
        base_url: str,
        user: str,
        password: str,
        app: str,
        *,
        timeout: float = 5.0,
        ssl: ssl_module.SSLContext | None = None,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        heartbeat: float | None = DEFAULT_HEARTBEAT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        on_request: Callable[[str, str, float], None] | None = None,
        credentials_hint: str = "",
    ) -> None:
        """`on_request(method, path template, seconds)` hears of every REST request when it
        ends (monitoring); `credentials_hint` is added to the one log line that says ARI
        refused the credentials (which settings name them)."""
        try:
            url = URL(base_url)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"ARI URL is not a URL: {shown(str(base_url), 60)}") from error
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(
                f"ARI URL must be http:// or https:// with a host, got {shown(base_url, 60)}"
            )
        if url.user is not None or url.password is not None:
            # Not echoed: the URL holds a secret.
            raise ConfigError("ARI URL must not contain credentials; give user and password")
        if url.raw_query_string or url.raw_fragment:
            raise ConfigError(f"ARI URL must not have a query or fragment: {shown(base_url, 60)}")
        if not user or ":" in user:
            raise ConfigError("ARI user must be non-empty and contain no ':'")
        if not app:
            raise ConfigError("ARI application name must not be empty")
        if timeout <= 0 or backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ConfigError("ARI timeout and backoff must be positive, initial <= max")
        if max_connections < 1:
            raise ConfigError(f"ARI max_connections must be at least 1, not {max_connections}")
        origin = str(url.origin())
        self._base = origin + url.raw_path.rstrip("/")
        self._ws_base = ("wss" if url.scheme == "https" else "ws") + self._base[len(url.scheme) :]
        self._where = f"{url.host}:{url.port}"
        self._user = user
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._headers: Final = {"Authorization": f"Basic {token}"}
        self._app = app
        self._timeout = timeout
        self._ssl: ssl_module.SSLContext | bool = ssl if ssl is not None else True
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._heartbeat = heartbeat
        self._session: aiohttp.ClientSession | None = None
        self._gate = _Gate(max_connections)
        self._sockets: set[aiohttp.ClientWebSocketResponse] = set()
        self._closing = asyncio.Event()
        self._connected = asyncio.Event()
        self._unknown_types: set[str] = set()
        self._answer_time = 0.0  # seconds per request, smoothed: see expected_wait
        self._jitter = random.Random()  # noqa: S311 - spreads reconnects; not a secret
        self.connect_attempts = 0  # WebSocket connection attempts so far (status and tests)
        self._on_request = on_request
        self._credentials_hint = credentials_hint
        # Why the events socket is not connected, while it is not (health checks, status).
        self.last_failure: str | None = None

    def __repr__(self) -> str:
        return f"AriClient({self._base!r}, user={self._user!r}, app={self._app!r})"

    @property
    def app(self) -> str:
        return self._app

    @property
    def max_connections(self) -> int:
        return self._gate.limit

    @property
    def backlog(self) -> int:
        """REST requests waiting for a connection: how far behind Asterisk's answers are."""
        return self._gate.waiting

    @property
    def expected_wait(self) -> float:
        """Seconds the waiting requests would take to be sent, each connection answering at
        the recent pace (a smoothed time per request, its timeouts included)."""
        return self._gate.waiting / self._gate.limit * self._answer_time

    async def __aenter__(self) -> AriClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """End the events iterator and release the HTTP session. Idempotent."""
        self._closing.set()
        for socket in list(self._sockets):
            await socket.close()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # REST

    async def answer(self, channel_id: str) -> None:
        await self._request(
            "POST", "/channels/{channelId}/answer", {"channelId": channel_id}, call_id=channel_id
        )

    async def play(
        self,
        channel_id: str,
        media: str,
        *,
        lang: str | None = None,
        playback_id: str | None = None,
    ) -> str:
        """Start playing `media`; returns the playback id (ours when `playback_id` is given,
        so that a PlaybackFinished overtaking this reply can already be matched)."""
        params: dict[str, _Param] = {"media": media, "lang": lang}
        if playback_id is None:
            reply = await self._request(
                "POST",
                "/channels/{channelId}/play",
                {"channelId": channel_id},
                params,
                call_id=channel_id,
            )
        else:
            reply = await self._request(
                "POST",
                "/channels/{channelId}/play/{playbackId}",
                {"channelId": channel_id, "playbackId": playback_id},
                params,
                call_id=channel_id,
            )
        data = reply.data
        if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"]:
            raise ProtocolViolation(
                "ARI play answered without a playback id", call_id=channel_id, status=reply.status
            )
        return str(data["id"])

    async def stop_playback(self, playback_id: str) -> None:
        """Stop a playback; one that already finished (404) is not an error."""
        await self._request(
            "DELETE",
            "/playbacks/{playbackId}",
            {"playbackId": playback_id},
            accept={404},
            urgent=True,
        )

    async def subscribe(self, channel_id: str) -> None:
        """Keep receiving the channel's events after it leaves Stasis."""
        reply = await self._request(
            "POST",
            "/applications/{applicationName}/subscription",
            {"applicationName": self._app},
            {"eventSource": f"channel:{channel_id}"},
            call_id=channel_id,
            accept={404},
            gone={422},
            # The reply is the application, with every channel it is subscribed to: as
            # long as the calls in progress, and of no use here.
            unread=True,
        )
        if reply.status == 404:
            # Swagger: 404 "Application does not exist" (our WebSocket is not registered);
            # a vanished channel is 422 "Event source does not exist".
            if "application" in reply.message.lower():
                raise AsteriskError(
                    f"ARI subscription: application {self._app!r} is not registered "
                    f"({shown(reply.message, 80)})",
                    call_id=channel_id,
                    status=404,
                )
            raise ChannelGone(
                f"ARI subscription: 404 {shown(reply.message, 80)}", call_id=channel_id, status=404
            )

    async def subscribed_channels(self) -> list[str]:
        """The channel ids our application is subscribed to ([] when it is not registered)."""
        reply = await self._request(
            "GET",
            "/applications/{applicationName}",
            {"applicationName": self._app},
            accept={404},
            gone=frozenset(),
        )
        if reply.status == 404 or not isinstance(reply.data, dict):
            return []
        ids = reply.data.get("channel_ids")
        return [str(i) for i in ids] if isinstance(ids, list) else []

    async def unsubscribe(self, channel_id: str) -> None:
        """End our subscription to a channel, which need not exist any more (Asterisk looks
        for the subscription only); one that is not there is no error."""
        await self._request(
            "DELETE",
            "/applications/{applicationName}/subscription",
            {"applicationName": self._app},
            {"eventSource": f"channel:{channel_id}"},
            call_id=channel_id,
            accept={404, 422},
            gone=frozenset(),
        )

    async def set_variable(self, channel_id: str, name: str, value: str) -> None:
        await self._request(
            "POST",
            "/channels/{channelId}/variable",
            {"channelId": channel_id},
            {"variable": name, "value": value},
            call_id=channel_id,
            urgent=True,
        )

    async def filter_events(self, allowed: Iterable[str]) -> bool:
        """Have Asterisk send our application only events of the `allowed` types (the rest
        cost it a write and us a read for nothing). False, and logged, when it refuses:
        the events then come unfiltered and the client drops the unwanted ones."""
        types = sorted(set(allowed))
        try:
            await self._request(
                "PUT",
                "/applications/{applicationName}/eventFilter",
                {"applicationName": self._app},
                json_body={"allowed": [{"type": t} for t in types], "disallowed": []},
                body_param="filter",
                gone=frozenset(),
            )
        except AsteriskError as error:
            log.warning("ARI: events not filtered by Asterisk (%s); dropped here instead", error)
            return False
        return True

    async def get_variable(self, channel_id: str, name: str) -> str | None:
        """The variable's value, or None when it is not set.

        Both a missing channel and a missing variable are 404 (Swagger: "Channel or variable
        not found"); Asterisk tells them apart only by message ("Provided variable was not
        found" vs "Provided channel was not found")."""
        reply = await self._request(
            "GET",
            "/channels/{channelId}/variable",
            {"channelId": channel_id},
            {"variable": name},
            call_id=channel_id,
            accept={404},
        )
        if reply.status == 404:
            message = reply.message.lower()
            if "variable" in message and "channel" not in message:
                return None
            raise ChannelGone(
                f"ARI GET /channels/{{channelId}}/variable: 404 {shown(reply.message, 80)}",
                call_id=channel_id,
                status=404,
            )
        data = reply.data
        if not isinstance(data, dict) or not isinstance(data.get("value"), str):
            raise ProtocolViolation(
                "ARI variable answer has no string 'value'", call_id=channel_id, status=200
            )
        return str(data["value"])

    async def continue_in_dialplan(
        self,
        channel_id: str,
        *,
        context: str | None = None,
        extension: str | None = None,
        priority: int | None = None,
    ) -> bool:
        """Hand the channel back to the dialplan. False when Asterisk answers 409 "Channel
        not in a Stasis application": it has left the app already; after an earlier
        `continue` that timed out, that one went through."""
        reply = await self._request(
            "POST",
            "/channels/{channelId}/continue",
            {"channelId": channel_id},
            {"context": context, "extension": extension, "priority": priority},
            call_id=channel_id,
            accept={409},
            urgent=True,
        )
        return reply.status != 409

    async def hangup(self, channel_id: str, reason: str = "normal") -> None:
        """Hang the channel up; one that is already gone (404) is not an error."""
        await self._request(
            "DELETE",
            "/channels/{channelId}",
            {"channelId": channel_id},
            {"reason": reason},
            call_id=channel_id,
            accept={404},
        )

    async def list_channels(self) -> list[dict[str, Any]]:
        reply = await self._request("GET", "/channels", {})
        data = reply.data
        if not isinstance(data, list) or not all(isinstance(c, dict) for c in data):
            raise ProtocolViolation("ARI channel list is not a list of objects", status=200)
        return data

    async def originate(
        self,
        endpoint: str,
        *,
        extension: str | None = None,
        context: str | None = None,
        priority: int | None = None,
        caller_id: str | None = None,
        app: str | None = None,
        app_args: str | None = None,
        variables: Mapping[str, str] | None = None,
        timeout: int | None = None,  # noqa: ASYNC109 - Asterisk's dial timeout, not ours
    ) -> dict[str, Any]:
        """Place a call (POST /channels); returns Asterisk's Channel object."""
        reply = await self._request(
            "POST",
            "/channels",
            {},
            {
                "endpoint": endpoint,
                "extension": extension,
                "context": context,
                "priority": priority,
                "callerId": caller_id,
                "app": app,
                "appArgs": app_args,
                "timeout": timeout,
            },
            None if variables is None else {"variables": dict(variables)},
        )
        return self._object_reply(reply, "originate")

    async def get_global(self, name: str) -> str:
        """A global dialplan variable ("" when it is not set)."""
        reply = await self._request("GET", "/asterisk/variable", {}, {"variable": name})
        return str(self._object_reply(reply, "variable").get("value", ""))

    async def set_global(self, name: str, value: str) -> None:
        await self._request("POST", "/asterisk/variable", {}, {"variable": name, "value": value})

    async def application_registered(self) -> bool:
        """Whether Asterisk has a Stasis application of our name (ours or another client's)."""
        reply = await self._request(
            "GET",
            "/applications/{applicationName}",
            {"applicationName": self._app},
            accept={404},
            gone=frozenset(),
        )
        return reply.status != 404

    async def ping(self) -> dict[str, Any]:
        """Asterisk's system information; raises AsteriskError when ARI is not usable."""
        return self._object_reply(await self._request("GET", "/asterisk/info", {}), "info")

    @staticmethod
    def _object_reply(reply: _Reply, what: str) -> dict[str, Any]:
        if not isinstance(reply.data, dict):
            raise ProtocolViolation(f"ARI {what} answer is not an object", status=reply.status)
        return reply.data

    def _url(
        self,
        method: str,
        template: str,
        path_params: Mapping[str, str],
        params: Mapping[str, _Param],
        body_keys: frozenset[str] = frozenset(),
        *,
        websocket: bool = False,
    ) -> URL:
        route = _route(method, template)
        if route is None:
            raise AsteriskError(f"ARI {method} {template} is not in ENDPOINTS")
        allowed, names, parts = route
        if not allowed.issuperset(params) or not allowed.issuperset(body_keys):
            extra = (set(params) | body_keys) - allowed
            raise AsteriskError(f"ARI {method} {template} takes no {sorted(extra)}")
        if names != path_params.keys():
            raise AsteriskError(f"ARI {method} {template} needs {sorted(path_params)}")
        pieces = list(parts)
        for n in range(1, len(pieces), 2):
            value = path_params[pieces[n]]
            if not value:
                raise AsteriskError(f"ARI {method} {template}: {pieces[n]} is empty")
            pieces[n] = _quote(value)
        path = "".join(pieces)
        query = "&".join(
            f"{_quote(name)}={_quote(_query_text(value))}"
            for name, value in params.items()
            if value is not None
        )
        base = self._ws_base if websocket else self._base
        return URL(base + path + (f"?{query}" if query else ""), encoded=True)

    async def _request(
        self,
        method: str,
        template: str,
        path_params: Mapping[str, str],
        params: Mapping[str, _Param] | None = None,
        json_body: Mapping[str, Any] | None = None,
        *,
        body_param: str | None = None,
        call_id: str | None = None,
        accept: set[int] | frozenset[int] = frozenset(),
        gone: set[int] | frozenset[int] = frozenset({404}),
        urgent: bool = False,
        unread: bool = False,
    ) -> _Reply:
        """Send one request; 2xx and `accept`ed statuses are returned, `gone` statuses raise
        ChannelGone, anything else raises AsteriskError. `urgent` requests get the next free
        connection before others that wait. The timeout counts from the request being sent,
        not from its wait for a connection. `body_param`: the Swagger parameter the whole
        body is (default: each of the body's keys is one). `unread`: a 2xx body is not
        decoded (the caller has no use for it)."""
        body_keys = frozenset(json_body or ()) if body_param is None else frozenset({body_param})
        url = self._url(method, template, path_params, params or {}, body_keys)
        what = f"ARI {method} {template}"
        session = self._open(call_id)
        await self._gate.acquire(urgent)
        started = asyncio.get_running_loop().time()
        try:
            status, body = await self._exchange(session, method, url, json_body, what, call_id)
        finally:
            self._gate.release()
            took = asyncio.get_running_loop().time() - started
            self._answer_time += ANSWER_SMOOTHING * (took - self._answer_time)
            if self._on_request is not None:
                self._on_request(method, template, took)
        if 200 <= status < 300:
            if unread:
                return _Reply(status, None, "")
            return _Reply(status, self._decode_body(body, what, status, call_id), "")
        message = _error_message(body)
        if status in accept:
            return _Reply(status, None, message)
        if status in gone:
            raise ChannelGone(
                f"{what}: {status} {shown(message, 80)}", call_id=call_id, status=status
            )
        if status in (401, 403):
            raise AsteriskError(
                f"{what}: {status}: ARI refused the credentials of user {self._user!r}",
                call_id=call_id,
                status=status,
            )
        raise AsteriskError(
            f"{what}: {status} {shown(message, 80)}", call_id=call_id, status=status
        )

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        json_body: Mapping[str, Any] | None,
        what: str,
        call_id: str | None,
    ) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for attempt in range(REFUSED_RETRIES + 1):
            try:
                async with session.request(
                    method,
                    url,
                    json=None if json_body is None else dict(json_body),
                    headers=self._headers,
                    ssl=self._ssl,
                    timeout=aiohttp.ClientTimeout(total=self._timeout),
                    allow_redirects=False,  # Asterisk never redirects; credentials stay put
                ) as response:
                    status = response.status
                    body = await response.read()
            except TimeoutError as error:
                raise AsteriskError(
                    f"{what}: no answer within {self._timeout:g} s", call_id=call_id
                ) from error
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionResetError) as error:
                # Closed before any answer: Asterisk past its session limit closes a new
                # connection unread, and a kept-alive one may have been closed as idle.
                # Either way the request was not carried out, so it is sent again.
                if attempt == REFUSED_RETRIES:
                    raise AsteriskError(
                        f"{what}: {self._failure(error)}", call_id=call_id
                    ) from error
                await asyncio.sleep(REFUSED_PAUSE * 2**attempt)
                continue
            except aiohttp.ClientError as error:
                raise AsteriskError(f"{what}: {self._failure(error)}", call_id=call_id) from error
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s -> %d in %.0f ms", what, status, (loop.time() - started) * 1000)
            return status, body
        raise AssertionError("unreachable: the last attempt returns or raises")

    @staticmethod
    def _decode_body(body: bytes, what: str, status: int, call_id: str | None) -> Any:
        if not body.strip():
            return None
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as error:
            raise ProtocolViolation(
                f"{what}: {status} with a body that is not JSON ({error})",
                call_id=call_id,
                status=status,
            ) from error

    def _failure(self, error: aiohttp.ClientError) -> str:
        """A failure in words that never include a URL (its query may hold caller data)."""
        if isinstance(error, aiohttp.ClientConnectorCertificateError):
            return f"TLS certificate of {self._where} not accepted ({error.certificate_error})"
        if isinstance(error, aiohttp.ClientConnectorError):
            return f"cannot reach {self._where} ({error.os_error.strerror or error.os_error})"
        return f"connection to {self._where} failed ({type(error).__name__})"

    def _open(self, call_id: str | None = None) -> aiohttp.ClientSession:
        if self._closing.is_set():
            raise AsteriskError("the ARI client is closed", call_id=call_id)
        if self._session is None:
            # Created here, not in __init__: a session belongs to the running event loop.
            self._session = aiohttp.ClientSession(
                # The gate keeps REST requests to its limit; one more for the events socket.
                connector=aiohttp.TCPConnector(limit=self._gate.limit + 1),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout),
                trust_env=False,
            )
        return self._session

    # Events

    async def events(
        self, wanted: frozenset[str] | None = None, variables: frozenset[str] | None = None
    ) -> AsyncGenerator[AriEvent | Reconnected, None]:
        """Events in arrival order, for as long as the client is open; reconnects on its own
        and yields Reconnected after each reconnection. Ends when the client is closed.
        With `wanted`, known event types not in it are dropped unread (a subscribed channel
        reports every dialplan step and variable; an app that reads few pays for few), and
        with `variables` too, ChannelVarset events of other variables."""
        url = self._url(
            "GET", "/events", {}, {"app": self._app, "subscribeAll": False}, websocket=True
        )
        loop = asyncio.get_running_loop()
        failures = 0  # attempts since the last connection that stayed up
        attempts = 0  # attempts since the connection was lost
        lost = False
        refused_told = False  # a refused login is explained once, not at every retry
        while not self._closing.is_set():
            attempts += 1
            self.connect_attempts += 1
            try:
                socket = await self._connect(url)
            except AsteriskError as error:
                if self._closing.is_set():
                    return
                failures += 1
                delay = self._backoff(failures)
                self.last_failure = str(error)
                if error.status in (401, 403):
                    # Not a passing fault: nothing changes until someone fixes a setting,
                    # so the long backoff, and one line saying which.
                    delay = self._backoff_max
                    if not refused_told:
                        refused_told = True
                        hint = f": {self._credentials_hint}" if self._credentials_hint else ""
                        log.error("ARI events: %s%s; retrying every %.0f s", error, hint, delay)
                    else:
                        log.debug("ARI events: %s; retrying in %.1f s", error, delay)
                else:
                    log.warning("ARI events: %s; retrying in %.1f s", error, delay)
                await self._pause(delay)
                continue
            refused_told = False
            self.last_failure = None
            opened = loop.time()
            self._sockets.add(socket)
            self._connected.set()
            try:
                if lost or attempts > 1:
                    # Also after a first connection that needed retries: channels may have
                    # entered Stasis meanwhile, and the app's start-up look was refused.
                    log.info("ARI events: connected after %d attempt(s)", attempts)
                    yield Reconnected(attempts)
                else:
                    log.info("ARI events: connected to %s as app %r", self._where, self._app)
                attempts = 0
                replaced = False
                async for message in socket:
                    if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        event = self._decode_logged(message.data, wanted, variables)
                        if event is not None:
                            yield event
                            if event.type == "ApplicationReplaced":
                                replaced = True
                                break
                    elif message.type == aiohttp.WSMsgType.ERROR:
                        break
            finally:
                self._sockets.discard(socket)
                if not self._sockets:
                    self._connected.clear()
                await socket.close()
            lost = True
            self.last_failure = "the events WebSocket closed"
            if self._closing.is_set():
                return
            if replaced:
                self.last_failure = f"another client took Stasis application {self._app!r}"
                # Another client registered our application name and receives its calls;
                # this socket hears nothing more, though it stays open and answers pings.
                # Taking the name back at once would fight that client, so wait for it to
                # go (Asterisk then destroys the application) and register again.
                log.error(
                    "ARI events: another client took Stasis application %r on %s (a second "
                    "`callrec serve`, or `callrec replay --ari`?); new calls reach it, not "
                    "this controller, until it disconnects",
                    self._app,
                    self._where,
                )
                await self._until_released()
                continue
            lived = loop.time() - opened
            # A connection that closes at once counts as a failure: no hot loop against a
            # server that accepts and hangs up.
            failures = 0 if lived >= self._backoff_max else failures + 1
            delay = self._backoff(failures)
            reason = socket.exception() or f"close code {socket.close_code}"
            log.warning(
                "ARI events: WebSocket closed after %.1f s (%s); reconnecting in %.1f s",
                lived,
                reason,
                delay,
            )
            await self._pause(delay)

    async def _until_released(self) -> None:
        """Return once Asterisk no longer has an application of our name (or when closed)."""
        while not self._closing.is_set():
            await self._pause(RELEASE_POLL)
            try:
                if not await self.application_registered():
                    log.warning("ARI events: application %r is free again", self._app)
                    return
            except AsteriskError as error:
                log.warning("ARI events: cannot see whether %r is free: %s", self._app, error)

    @property
    def connected(self) -> bool:
        """Whether the events WebSocket is up and ours."""
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        """Return once the events WebSocket is up (Asterisk then knows the app, so that
        subscriptions are accepted)."""
        await self._connected.wait()

    async def _connect(self, url: URL) -> aiohttp.ClientWebSocketResponse:
        session = self._open()
        try:
            async with asyncio.timeout(self._timeout):
                return await session.ws_connect(
                    url,
                    headers=self._headers,
                    heartbeat=self._heartbeat,
                    max_msg_size=MAX_FRAME_BYTES,
                    # A server that never answers our close frame must not hold close() up.
                    timeout=aiohttp.ClientWSTimeout(ws_close=self._timeout),
                    ssl=self._ssl,
                )
        except TimeoutError as error:
            raise AsteriskError(
                f"no WebSocket from {self._where} within {self._timeout:g} s"
            ) from error
        except aiohttp.WSServerHandshakeError as error:
            if error.status in (401, 403):
                raise AsteriskError(
                    f"ARI refused the credentials of user {self._user!r} ({error.status})",
                    status=error.status,
                ) from error
            raise AsteriskError(
                f"{self._where} refused the events WebSocket ({error.status})",
                status=error.status,
            ) from error
        except aiohttp.ClientError as error:
            raise AsteriskError(self._failure(error)) from error

    def _decode_logged(
        self,
        data: str | bytes,
        wanted: frozenset[str] | None = None,
        variables: frozenset[str] | None = None,
    ) -> AriEvent | None:
        if wanted is not None and isinstance(data, str) and unwanted(data, wanted, variables):
            return None
        try:
            parsed = parse_event(data)
            if (
                wanted is not None
                and parsed["type"] not in wanted
                and parsed["type"] in EVENT_TYPES
                and parsed["type"] != "ApplicationReplaced"
            ):
                return None
            event = lift_event(parsed)
        except ProtocolViolation as error:
            log.warning("ARI events: dropped a message of %d bytes: %s", message_size(data), error)
            return None
        unknown = event.type not in EVENT_TYPES and event.type not in self._unknown_types
        if unknown and len(self._unknown_types) < UNKNOWN_TYPES_LOGGED:
            self._unknown_types.add(event.type)
            log.warning("ARI events: unknown event type %s, passed on", shown(event.type, 40))
        return event

    def _backoff(self, failures: int) -> float:
        ceiling = min(self._backoff_max, self._backoff_initial * 2 ** min(max(failures - 1, 0), 32))
        return self._jitter.uniform(ceiling / 2, ceiling)

    async def _pause(self, delay: float) -> None:
        """Sleep `delay` seconds, or less if the client is closed meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._closing.wait()


@functools.cache
def _route(
    method: str, template: str
) -> tuple[frozenset[str], frozenset[str], tuple[str, ...]] | None:
    """What `_url` checks and fills for an endpoint, worked out once: the parameters it
    takes, its placeholders, and its template split around them (literal, name, literal,
    ...). None: not in ENDPOINTS."""
    allowed = _ALLOWED.get((method, template))
    if allowed is None:
        return None
    parts = tuple(_PLACEHOLDER.split(template))
    return allowed, frozenset(parts[1::2]), parts


@functools.lru_cache(maxsize=4096)  # a call's channel id is quoted for each of its requests
def _quote(value: str) -> str:
    """Percent-encode everything but unreserved characters: `/`, `?`, `%` stay data."""
    return quote(value, safe="")
