"""A simulated PBX: the subset of Asterisk's ARI that callrec uses, on loopback.

`SimulatedPbx` is a real HTTP + WebSocket server (aiohttp) whose paths, parameters, status
codes, error bodies and event order follow Asterisk's ARI (`../shared/ari-spec/`) and what a
real Asterisk sent in `../shared/ari-traces/`; behind it a small switch (`agi.simpbx.core`)
runs a dialplan (`agi.simpbx.dialplan`, by default the one of `asterisk-conf/`) for scripted
callers (`CallerScript`): they press digits, hang up, are answered by an agent or give up,
and are called back. When the dialplan runs `MixMonitor` the simulator writes a real WAV
file, 8 kHz mono 16-bit, header-only when nobody was bridged.

`callrec demo`, `callrec replay` and the tests drive calls through it; the controller cannot
tell it from Asterisk through the ARI. With `mode="agi"` the dialplan is FastAGI mode's
(`extensions-fastagi.conf`) and `AGI()` is a real FastAGI client (`agi.simpbx.fastagi`) of the
controller's server at `fastagi`. Faults for resilience tests: `fail_next` (REST answers
with an error, after a delay that outlasts a client's timeout), `drop_websockets` and
`drop_websockets_at` (the events socket closes, now or at an event), `restart` (every live
channel is lost, the port comes back). Load, as a busy Asterisk shows it: `limit_sessions`
(http.conf's `sessionlimit`: connections past it are closed unanswered), `slow_rest`
(answers delayed more the more requests are in flight) and `delay_next` (a request carried
out late, e.g. a `continue` that lands after the client gave up on it).

REST paths served under `/ari`: `GET asterisk/info`, `GET asterisk/ping`, `GET|POST channels`,
`GET|DELETE channels/{id}`, `POST channels/{id}/answer`, `POST channels/{id}/play[/{pbId}]`,
`GET|POST channels/{id}/variable`, `POST channels/{id}/continue`, `GET|DELETE
playbacks/{id}`, `GET applications[/{app}]`, `POST|DELETE applications/{app}/subscription`,
and the WebSocket `GET events?app=...[&subscribeAll=true]`. Authentication: HTTP Basic or
`?api_key=user:password`, else 401.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fnmatch
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote

from aiohttp import WSMsgType, web

from agi.simpbx.calls import CallerScript, CallResult, SimCall
from agi.simpbx.core import Switch
from agi.simpbx.dialplan import Dialplan, callrec_dialplan
from agi.simpbx.errors import SimulationSettingError, SimulatorStateError
from agi.simpbx.model import Json, StasisApp, timestamp
from agi.simpbx.rest import (
    DEFAULT_LOCAL_SCRIPTS,
    ENTITY_ID,
    AriResources,
    Reply,
    error_reply,
)

log = logging.getLogger("callrec.simpbx")

SHUTDOWN_GRACE = 0.5  # seconds in-flight requests get when the simulator stops
REALM = "Asterisk REST Interface"


@dataclass(slots=True)
class _Fault:
    method: str
    pattern: str
    status: int
    remaining: int
    delay: float
    carry_out: bool = False  # after the delay, do what was asked and answer as usual


class _Refused(asyncio.Protocol):
    """Asterisk past its `sessionlimit`: the connection is accepted and closed unread
    (main/tcptls.c, "HTTP session count exceeded")."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted while it is open."""

    def __init__(self, inner: asyncio.Protocol, open_sessions: list[int]) -> None:
        self._inner = inner
        self._open = open_sessions
        self._open[0] += 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._open[0] -= 1
        self._inner.connection_lost(exc)


@dataclass(eq=False)
class _Socket:
    ws: web.WebSocketResponse
    outbox: asyncio.Queue[Json | None] = field(default_factory=asyncio.Queue)
    sinks: dict[str, Callable[[Json], None]] = field(default_factory=dict)  # app -> its sink
    closed: bool = False


_STRUCTURED = frozenset({"variables", "allowed", "disallowed"})  # body fields kept as JSON


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("yes", "true", "y", "t", "1", "on")


class SimulatedPbx:
    def __init__(
        self,
        *,
        app: str = "callrec",
        user: str = "callrec",
        password: str | None = None,
        prompt_durations: Mapping[str, float] | None = None,
        time_scale: float = 1.0,
        dialplan: Dialplan | None = None,
        dids: Mapping[str, str] | None = None,
        local_scripts: Mapping[str, CallerScript] | None = None,
        epoch: int | None = None,
        mode: str = "ari",
        fastagi: tuple[str, int] | None = None,
    ) -> None:
        if time_scale <= 0:
            raise SimulationSettingError(
                f"simulated PBX: time_scale must be positive, not {time_scale}"
            )
        self.app = app
        self.user = user
        # Loopback only, but never a known default: callers read it back when they need it.
        self.password = password if password is not None else secrets.token_urlsafe(16)
        self.time_scale = time_scale
        # CALLREC_MODE: `agi` runs extensions-fastagi.conf's contexts, whose AGI() connects
        # to `fastagi` (the controller's FastAGI server) whatever address the dialplan names.
        # `dids` (DID -> queue) is callrec-inbound's table; by default the checkout's
        # asterisk-conf/ (an installed package's runner hands over the one it ships).
        self.dialplan = dialplan or callrec_dialplan(app, dids, mode=mode)
        self._fastagi = fastagi
        self._prompt_durations = dict(prompt_durations or {})
        self._epoch = epoch if epoch is not None else int(time.time())
        self._switch: Switch | None = None
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self._sockets: set[_Socket] = set()
        self._writers: set[asyncio.Task[None]] = set()
        self._faults: list[_Fault] = []
        self._server: asyncio.Server | None = None
        self._sessions = [0]  # HTTP connections open now (a list: shared with _Counted)
        self.session_limit: int | None = None  # see limit_sessions
        self.refused_sessions = 0  # connections closed unanswered for the session limit
        self.peak_sessions = 0  # the most HTTP connections open at once
        self._slow: tuple[float, float] | None = None  # see slow_rest
        self._rest_in_flight = 0
        self._drop_at: list[tuple[str, bool]] = []
        self._log: list[dict[str, Any]] = []
        self._started = 0.0
        self._resources = AriResources(
            self._live_switch,
            self.dialplan,
            {**DEFAULT_LOCAL_SCRIPTS, **(local_scripts or {})},
        )

    # -- lifecycle -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}/ari"

    @property
    def fastagi(self) -> tuple[str, int] | None:
        """Where `AGI()` connects (host, port), whatever address the dialplan names."""
        return self._fastagi

    @fastagi.setter
    def fastagi(self, address: tuple[str, int] | None) -> None:
        self._fastagi = address
        if self._switch is not None:
            self._switch.fastagi = address

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on `host:port` (0: a free port); return the ARI base URL."""
        if self._runner is not None:
            raise SimulatorStateError("the simulated PBX is already running")
        self._host = host
        self._started = asyncio.get_running_loop().time()
        await self._serve(port)
        return self.base_url

    async def stop(self) -> None:
        """Close every socket, lose every live channel (their calls resolve), stop serving."""
        await self._shutdown()

    async def restart(self, down_for: float = 0.0) -> None:
        """A PBX restart: sockets close, live channels are lost without events (MixMonitor
        closes its files), applications and subscriptions are forgotten, channel ids start
        from a new epoch; after `down_for` wall seconds the same port serves again."""
        if self._runner is None:
            raise SimulatorStateError("the simulated PBX is not running")
        port = self._port
        await self._shutdown()
        if down_for > 0:
            await asyncio.sleep(down_for)
        self._epoch += 1
        await self._serve(port)

    async def _serve(self, port: int) -> None:
        self._switch = Switch(
            dialplan=self.dialplan,
            prompt_durations=self._prompt_durations,
            time_scale=self.time_scale,
            epoch=self._epoch,
            entity_id=ENTITY_ID,
            fastagi=self._fastagi,
        )
        application = web.Application()
        application.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(application, shutdown_timeout=SHUTDOWN_GRACE, access_log=None)
        await runner.setup()
        handler = runner.server
        assert handler is not None  # set up above

        def connection() -> asyncio.Protocol:
            # Counted as Asterisk counts HTTP sessions: every connection, the events
            # WebSocket included, from accept to close.
            if self.session_limit is not None and self._sessions[0] >= self.session_limit:
                self.refused_sessions += 1
                return _Refused()
            counted = _Counted(handler(), self._sessions)
            self.peak_sessions = max(self.peak_sessions, self._sessions[0])
            return counted

        try:
            server = await asyncio.get_running_loop().create_server(
                connection, self._host, port, reuse_address=True
            )
        except OSError as error:
            await runner.cleanup()
            raise SimulatorStateError(
                f"the simulated PBX cannot listen on {self._host}:{port}: {error.strerror}"
            ) from None
        self._runner = runner
        self._server = server
        self._port = int(server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        for socket in list(self._sockets):
            self._close_socket(socket, flush=False)
        switch = self._switch
        if switch is not None:
            for stasis_app in switch.apps.values():
                stasis_app.sink = None
            await switch.cancel_tasks()
            for channel in list(switch.channels.values()):
                switch.destroy(channel, quietly=True)
        for socket in list(self._sockets):
            with contextlib.suppress(Exception):
                await socket.ws.close()
        self._sockets.clear()
        writers = list(self._writers)
        for writer in writers:
            writer.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # -- what tests and the runner look at -----------------------------------------------

    @property
    def log(self) -> list[dict[str, Any]]:
        """Trace-format entries, as in `ari-traces/`: REST requests with their answers, and
        the events as they were put on each WebSocket."""
        return list(self._log)

    def connected(self, app: str | None = None) -> bool:
        """Whether a WebSocket is registered for `app` (default: this PBX's app)."""
        stasis_app = self._live_switch().apps.get(app or self.app)
        return stasis_app is not None and stasis_app.active

    def channel_ids(self) -> list[str]:
        return list(self._live_switch().channels)

    def _live_switch(self) -> Switch:
        if self._switch is None:
            raise SimulatorStateError("the simulated PBX was never started")
        return self._switch

    # -- calls -------------------------------------------------------------------------

    async def place_call(self, dialed: str, caller: str | None, script: CallerScript) -> SimCall:
        """A caller (`caller`: the caller ID number, None for anonymous) dials `dialed`; the
        channel enters the inbound context of the dialplan at once."""
        if not dialed.strip():
            raise SimulationSettingError("simulated call: the dialed number is empty")
        switch = self._running_switch()
        channel = switch.new_channel(tech="PJSIP/trunk", caller_number=caller or "", script=script)
        context = self.dialplan.inbound_context
        channel.locate(context, dialed, 1, "", "")
        switch.start_pbx(channel, context, dialed, 1)
        return SimCall(channel.id, channel.finished)

    async def place_callback(
        self,
        customer: str,
        line: str | None,
        *,
        agent_script: CallerScript,
        customer_script: CallerScript,
        agent: str = "201",
    ) -> SimCall:
        """An agent (extension `agent`) dials `customer` through the callback context, with
        `CALLREC_LINE` set to `line`. `done` resolves when both legs are gone; its `callee`
        is the customer's leg when that leg ran the notice Gosub."""
        if not customer.strip():
            raise SimulationSettingError("simulated callback: the customer's number is empty")
        switch = self._running_switch()
        channel = switch.new_channel(tech="PJSIP/agent", caller_number=agent, script=agent_script)
        if line:
            channel.variables["CALLREC_LINE"] = line
        channel.dial_script = customer_script
        context = self.dialplan.callback_context
        channel.locate(context, customer, 1, "", "")
        done: asyncio.Future[CallResult] = asyncio.get_running_loop().create_future()

        def settle(_: object = None) -> None:
            if done.done() or not channel.finished.done():
                return
            peer = channel.peer
            if peer is not None and not peer.finished.done():
                peer.finished.add_done_callback(settle)
                return
            callee = peer.finished.result() if peer is not None and peer.ran_gosub else None
            done.set_result(replace(channel.finished.result(), callee=callee))

        channel.finished.add_done_callback(settle)
        switch.start_pbx(channel, context, customer, 1)
        return SimCall(channel.id, done)

    def _running_switch(self) -> Switch:
        if self._runner is None or self._switch is None:
            raise SimulatorStateError("the simulated PBX is not running")
        return self._switch

    # -- faults ------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_pattern: str,
        *,
        status: int = 500,
        count: int = 1,
        delay: float = 0.0,
    ) -> None:
        """The next `count` requests whose method is `method` and whose path (as in the
        traces, without `/ari`, e.g. `/channels/*/continue`; shell-style wildcards) matches
        get `status` with `{"message": ...}` after `delay` wall seconds, and do nothing."""
        if count < 1:
            raise SimulationSettingError(f"fail_next: count must be at least 1, not {count}")
        if not 100 <= status <= 599:
            raise SimulationSettingError(f"fail_next: {status} is not an HTTP status")
        self._faults.append(_Fault(method.upper(), path_pattern, status, count, delay))

    def delay_next(self, method: str, path_pattern: str, *, delay: float, count: int = 1) -> None:
        """The next `count` matching requests (as `fail_next`) are carried out and answered
        only after `delay` wall seconds: a client that gave up on one meanwhile may send it
        again, and find it done (a second `continue` gets 409)."""
        if count < 1 or delay <= 0:
            raise SimulationSettingError("delay_next: count must be at least 1 and delay positive")
        self._faults.append(_Fault(method.upper(), path_pattern, 0, count, delay, True))

    def limit_sessions(self, limit: int | None) -> None:
        """Serve at most `limit` HTTP connections at once (None: no limit), as Asterisk's
        http.conf `sessionlimit`: more are closed before a request is read."""
        if limit is not None and limit < 1:
            raise SimulationSettingError(f"limit_sessions: limit must be at least 1, not {limit}")
        self.session_limit = limit

    def slow_rest(self, base: float, per_request: float) -> None:
        """Every REST answer waits `base` plus `per_request` wall seconds for each REST
        request in flight (itself included): an Asterisk that slows down under load."""
        if base < 0 or per_request < 0:
            raise SimulationSettingError("slow_rest: delays cannot be negative")
        self._slow = (base, per_request) if base or per_request else None

    async def drop_websockets(self) -> None:
        """Close every events WebSocket now; the applications go inactive (a call arriving
        before a reconnect fails Stasis), their subscriptions survive, as on Asterisk."""
        sockets = list(self._sockets)
        for socket in sockets:
            self._close_socket(socket, flush=False)
        for socket in sockets:
            with contextlib.suppress(Exception):
                await socket.ws.close()

    def drop_websockets_at(self, event_type: str, *, deliver: bool = False) -> None:
        """When the next event of `event_type` is to be sent, close every events WebSocket:
        after sending it (`deliver`) or instead (the event is lost)."""
        self._drop_at.append((event_type, deliver))

    # -- HTTP --------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = request.rel_url.raw_path
        if not raw.startswith("/ari/"):
            return web.json_response({"message": "Not Found"}, status=404)
        if not self._authorised(request):
            return web.json_response(
                {"message": "Authentication required"},
                status=401,
                headers={"WWW-Authenticate": f'Basic realm="{REALM}"'},
            )
        encoded = raw[len("/ari") :]
        segments = tuple(unquote(part) for part in encoded.strip("/").split("/"))
        relative = unquote(encoded)  # as the traces write paths; ids may hold any character
        method = request.method.upper()
        params = await self._params(request)
        if isinstance(params, Reply):
            return self._respond(method, relative, {}, params)
        fault = self._fault(method, relative)
        if fault is not None:
            if fault.delay > 0:
                await asyncio.sleep(fault.delay)
            if not fault.carry_out:
                return self._respond(
                    method, relative, params, error_reply(fault.status, "Injected fault")
                )
        if self._slow is not None and segments != ("events",):
            self._rest_in_flight += 1
            try:
                base, per_request = self._slow
                await asyncio.sleep(base + per_request * self._rest_in_flight)
            finally:
                self._rest_in_flight -= 1
        if relative.endswith("/"):
            reply = error_reply(404, f"ARI URLs do not end with a slash. Try /ari{relative[:-1]}")
            return self._respond(method, relative, params, reply)
        if segments == ("events",) and method == "GET":
            return await self._events(request, params)
        reply = await self._resources.handle(method, segments, params)
        return self._respond(method, relative, params, reply)

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if header[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
        elif "api_key" in request.query:
            decoded = request.query["api_key"]
        else:
            return False
        user, sep, password = decoded.partition(":")
        return bool(sep) and (
            hmac.compare_digest(user.encode(), self.user.encode())
            & hmac.compare_digest(password.encode(), self.password.encode())
        )

    async def _params(self, request: web.Request) -> dict[str, Any] | Reply:
        """Query parameters, and the fields of a JSON object body (ARI takes both)."""
        params: dict[str, Any] = {k: v for k, v in request.query.items() if k != "api_key"}
        if request.can_read_body:
            text = await request.text()
            if text.strip():
                try:
                    body = json.loads(text)
                except ValueError:
                    return error_reply(400, "Error parsing request body")
                if isinstance(body, dict):
                    for key, value in body.items():
                        # Structured fields stay JSON (originate's `variables`, an event
                        # filter's lists); the rest are text as in a query.
                        structured = isinstance(value, dict | list) and key in _STRUCTURED
                        params.setdefault(key, value if structured else str(value))
        return params

    def _fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.method == method and fnmatch.fnmatchcase(path, fault.pattern):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _respond(
        self, method: str, path: str, params: Mapping[str, Any], reply: Reply
    ) -> web.Response:
        self._record(
            {
                "kind": "rest",
                "method": method,
                "path": path,
                "params": dict(params),
                "status": reply.status,
                "body": "" if reply.body is None else reply.body,
            }
        )
        if reply.status == 204 or reply.body is None:
            return web.Response(status=reply.status, headers=reply.headers)
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)

    def _record(self, entry: dict[str, Any]) -> None:
        elapsed = asyncio.get_running_loop().time() - self._started
        self._log.append({"t": round(elapsed, 3), **entry})

    # -- the events WebSocket -------------------------------------------------------------

    async def _events(self, request: web.Request, params: dict[str, Any]) -> web.StreamResponse:
        names = [name.strip() for name in str(params.get("app", "")).split(",") if name.strip()]
        if not names:
            return self._respond(
                "GET", "/events", params, error_reply(400, "HTTP request is missing param: [app]")
            )
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        socket = _Socket(ws)
        self._sockets.add(socket)
        writer = asyncio.get_running_loop().create_task(self._write(socket))
        self._writers.add(writer)
        writer.add_done_callback(self._writers.discard)
        switch = self._live_switch()
        subscribe_all = _true(params.get("subscribeAll"))
        for name in names:
            stasis_app = switch.apps.setdefault(name, StasisApp(name))
            if stasis_app.sink is not None:
                # A second socket takes the application over; the first hears it once.
                stasis_app.sink({"type": "ApplicationReplaced", "timestamp": timestamp()})
            stasis_app.sink = socket.sinks[name] = self._sink(socket, name)
            stasis_app.subscribe_all = subscribe_all
        switch.tidy_apps()
        try:
            async for message in ws:
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            self._close_socket(socket, flush=False)
            self._sockets.discard(socket)
        return ws

    def _sink(self, socket: _Socket, app: str) -> Callable[[Json], None]:
        def deliver(event: Json) -> None:
            if socket.closed:
                return
            event.setdefault("application", app)
            drop = next((d for d in self._drop_at if d[0] == event.get("type")), None)
            if drop is not None:
                self._drop_at.remove(drop)
                if drop[1]:
                    self._record({"kind": "event", "event": event})
                    socket.outbox.put_nowait(event)
                for each in list(self._sockets):
                    self._close_socket(each, flush=True)
                return
            self._record({"kind": "event", "event": event})
            socket.outbox.put_nowait(event)

        return deliver

    def _close_socket(self, socket: _Socket, *, flush: bool) -> None:
        """Detach the socket's applications at once (they go inactive), then close it after
        what it already holds was sent (`flush`) or straight away."""
        if socket.closed:
            return
        socket.closed = True
        if self._switch is not None:
            for name, sink in socket.sinks.items():
                stasis_app = self._switch.apps.get(name)
                if stasis_app is not None and stasis_app.sink is sink:
                    stasis_app.sink = None
            self._switch.tidy_apps()
        if not flush:
            while not socket.outbox.empty():
                socket.outbox.get_nowait()
        socket.outbox.put_nowait(None)

    async def _write(self, socket: _Socket) -> None:
        while True:
            event = await socket.outbox.get()
            if event is None:
                with contextlib.suppress(Exception):
                    await socket.ws.close()
                return
            try:
                await socket.ws.send_str(json.dumps(event))
            except (ConnectionError, RuntimeError):
                return
