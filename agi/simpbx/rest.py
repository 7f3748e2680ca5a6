"""The ARI REST resources of the simulated PBX, as Asterisk's `res/ari/resource_*.c` answer.

Each handler takes the request's parameters (query and JSON body) and path parameters and
returns a `Reply`: the status code and body Asterisk gives, errors as `{"message": ...}` with
Asterisk's own wording (404 "Channel not found", 409 "Channel not in Stasis application",
404 "Playback not found", 400 "Variable name is required", ...).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from agi.simpbx.calls import CallerScript
from agi.simpbx.core import Switch
from agi.simpbx.dialplan import Dialplan
from agi.simpbx.model import (
    EXPLICIT_SOFT_HANGUP,
    HANGUP,
    NORMAL_CLEARING,
    Channel,
    Json,
    Jump,
    Playback,
    StasisApp,
    timestamp,
)

ENTITY_ID = "02:00:5e:00:53:01"  # the simulator's asterisk_id (a documentation MAC address)
VERSION = "callrec-simpbx"
# DELETE /channels/{id}?reason= -> Q.850 cause, as resource_channels.c maps them.
HANGUP_REASONS: Mapping[str, int] = MappingProxyType(
    {
        "normal": 16,
        "busy": 17,
        "congestion": 34,
        "no_answer": 19,
        "timeout": 18,
        "rejected": 21,
        "unallocated": 1,
        "normal_unspecified": 31,
        "number_incomplete": 28,
        "codec_mismatch": 58,
        "interworking": 127,
        "failure": 38,
        "answered_elsewhere": 26,
    }
)
# Caller scripts for `POST /channels` with endpoint `Local/<name>@<context>`: the extensions
# of asterisk-conf's `callrec-test-caller`, timed as their Wait()s and SendDTMF()s (a played
# prompt counted as 4 s).
DEFAULT_LOCAL_SCRIPTS: Mapping[str, CallerScript] = MappingProxyType(
    {
        "sales": CallerScript(hang_up_at=52.0),
        "press1": CallerScript(keys=((3.0, "1"),), hang_up_at=37.0),
        "press2": CallerScript(keys=((3.0, "2"),), hang_up_at=33.0),
        "other-key-then-1": CallerScript(keys=((3.0, "5"), (7.0, "1")), hang_up_at=37.0),
        "silent": CallerScript(hang_up_at=120.0),
        "hangup-early": CallerScript(hang_up_at=2.0),
        "press1-giveup": CallerScript(keys=((3.0, "1"),), hang_up_at=11.0),
    }
)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any = None  # JSON; None for 204
    headers: Mapping[str, str] = field(default_factory=dict)


def error_reply(status: int, message: str) -> Reply:
    return Reply(status, {"message": message})


NO_CONTENT = Reply(204)


Handler = Callable[[dict[str, Any], dict[str, str]], Awaitable[Reply]]


def _parse_caller_id(text: str) -> tuple[str, str]:
    """`Ana <041123456>` -> ("Ana", "041123456"); a bare number has no name."""
    text = text.strip()
    if "<" in text and text.endswith(">"):
        name, _, number = text[:-1].partition("<")
        return name.strip().strip('"'), number.strip()
    return "", text


class AriResources:
    """The REST resources over the switch the PBX runs now (a restart makes a new one)."""

    def __init__(
        self,
        switch: Callable[[], Switch],
        dialplan: Dialplan,
        local_scripts: Mapping[str, CallerScript],
    ) -> None:
        self._switch = switch
        self.dialplan = dialplan
        self._local_scripts = local_scripts
        self._routes: list[tuple[str, tuple[str, ...], Handler]] = [
            ("GET", ("asterisk", "info"), self._asterisk_info),
            ("GET", ("asterisk", "ping"), self._asterisk_ping),
            ("GET", ("asterisk", "variable"), self._get_global),
            ("GET", ("channels",), self._list_channels),
            ("POST", ("channels",), self._originate),
            ("GET", ("channels", "{channelId}"), self._get_channel),
            ("DELETE", ("channels", "{channelId}"), self._hangup),
            ("POST", ("channels", "{channelId}", "answer"), self._answer),
            ("POST", ("channels", "{channelId}", "play"), self._play),
            ("POST", ("channels", "{channelId}", "play", "{playbackId}"), self._play),
            ("GET", ("channels", "{channelId}", "variable"), self._get_variable),
            ("POST", ("channels", "{channelId}", "variable"), self._set_variable),
            ("POST", ("channels", "{channelId}", "continue"), self._continue),
            ("GET", ("playbacks", "{playbackId}"), self._get_playback),
            ("DELETE", ("playbacks", "{playbackId}"), self._stop_playback),
            ("GET", ("applications",), self._list_applications),
            ("GET", ("applications", "{applicationName}"), self._get_application),
            ("PUT", ("applications", "{applicationName}", "eventFilter"), self._filter),
            ("POST", ("applications", "{applicationName}", "subscription"), self._subscribe),
            ("DELETE", ("applications", "{applicationName}", "subscription"), self._unsubscribe),
        ]

    async def handle(self, method: str, segments: tuple[str, ...], params: dict[str, Any]) -> Reply:
        handler, path_params, reply = self.route(method, segments)
        return reply if handler is None else await handler(params, path_params)

    def route(
        self, method: str, segments: tuple[str, ...]
    ) -> tuple[Handler | None, dict[str, str], Reply]:
        path_matched = False
        for route_method, template, handler in self._routes:
            if len(template) != len(segments):
                continue
            found: dict[str, str] = {}
            for part, value in zip(template, segments, strict=True):
                if part.startswith("{"):
                    found[part[1:-1]] = value
                elif part != value:
                    break
            else:
                path_matched = True
                if route_method == method:
                    return handler, found, NO_CONTENT
        if path_matched:
            return None, {}, error_reply(405, "Invalid method")
        return None, {}, error_reply(404, "Resource not found")

    # -- REST handlers: asterisk ---------------------------------------------------------

    async def _asterisk_info(self, params: dict[str, Any], path: dict[str, str]) -> Reply:
        started = timestamp()
        info: Json = {
            "build": {
                "os": "Linux",
                "kernel": "",
                "options": "",
                "machine": "",
                "date": "",
                "user": "",
            },
            "system": {"version": VERSION, "entity_id": ENTITY_ID},
            "config": {
                "name": "",
                "default_language": "en",
                "setid": {"user": "", "group": ""},
            },
            "status": {"startup_time": started, "last_reload_time": started},
        }
        only = [part for part in str(params.get("only", "")).split(",") if part in info]
        return Reply(200, {key: info[key] for key in only} if only else info)

    async def _asterisk_ping(self, params: dict[str, Any], path: dict[str, str]) -> Reply:
        return Reply(200, {"asterisk_id": ENTITY_ID, "ping": "pong", "timestamp": timestamp()})

    # -- REST handlers: channels ---------------------------------------------------------

    async def _list_channels(self, params: dict[str, Any], path: dict[str, str]) -> Reply:
        return Reply(200, [c.snapshot() for c in self._switch().channels.values()])

    async def _get_channel(self, params: dict[str, Any], path: dict[str, str]) -> Reply:
        channel = self._switch().channels.get(path["channelId"])
        if channel is None:
            return error_reply(404, "Channel not found")
        return Reply(200, channel.snapshot())

    def _control(self, channel_id: str) -> Channel | Reply:
        """The channel if it is in Stasis, else Asterisk's answer (404 or 409)."""
        channel = self._switch().channels.get(channel_id)
        if channel is None:
            return error_reply(404, "Channel not found")
        if channel.stasis_app is None:
            return error_reply(409, "Channel not in Stasis application")
        return channel

    def _controllable(self, channel_id: str) -> Channel | Reply:
        channel = self._control(channel_id)
        if isinstance(channel, Channel) and channel.state in ("Down", "Rsrved", "Ringing"):
            return error_reply(412, "Channel in invalid state")
        return channel

    async def _originate(self, params: dict[str, Any], path: dict[str, str]) -> Reply:
        switch = self._switch()
        endpoint = str(params.get("endpoint", ""))
        if not endpoint:
            return error_reply(400, "Endpoint must be specified")
        tech, _, resource = endpoint.partition("/")
        if not tech or not resource:
            return error_reply(400, "Invalid endpoint specified")
        app = str(params.get("app", ""))
        extension = str(params.get("extension", ""))
        if not app and not extension:
            return error_reply(400, "Application or extension must be specified")
        channel_id = str(params.get("channelId", "")) or None
        if channel_id is not None and channel_id in switch.channels:
            return error_reply(409, "Channel with given unique ID already exists")
        try:
            priority = int(params.get("priority") or 1)
        except ValueError:
            return error_reply(400, "Requested priority is illegal")
        name, _, local_context = resource.partition("/")[0].partition("@")
        script = self._local_scripts.get(name) if tech == "Local" else None
        if script is None:
            # Asterisk cannot create a channel for an endpoint it does not have; the
            # simulator has only the Local test callers of `local_scripts`.
            return error_reply(500, "Allocation failed")
        caller_name, caller_number = _parse_caller_id(str(params.get("callerId", "")))
        local_context = local_context or "default"
        channel = switch.new_channel(
            tech=f"Local/{name}@{local_context}",
            caller_name=caller_name,
            caller_number=caller_number,
            script=script,
            state="Down",
            channel_id=channel_id,
        )
        channel.name += ";1"
        channel.outgoing_local = True
        channel.locate(local_context, name, 1, "AppDial2", "(Outgoing Line)")
        variables = params.get("variables")
        if isinstance(variables, Mapping):
            inner = variables.get("variables", variables)
            if isinstance(inner, Mapping):
                channel.variables.update({str(k): str(v) for k, v in inner.items()})
        reply = Reply(200, channel.snapshot())
        switch.spawn(
            self._run_originated(
                switch,
                channel,
                app,
                str(params.get("appArgs", "")),
                str(params.get("context", "")) or "default",
                extension or "s",
                priority,
            ),
            channel,
        )
        return reply

    async def _run_originated(
        self,
        switch: Switch,
        channel: Channel,
        app: str,
        app_args: str,
        context: str,
        extension: str,
        priority: int,
    ) -> None:
        # The Local channel's other half is the scripted caller: it answers at once.
        channel.state = "Up"
        if not app:
            switch.start_dialplan(channel)
            await switch.run_priorities(channel, context, extension, priority)
            switch.destroy(channel)
            return
        switch.start_dialplan(channel)
        data = f"{app},{app_args}" if app_args else app
        channel.locate("", "", 1, "Stasis", data)
        outcome = await switch.app_stasis(channel, data)
        if isinstance(outcome, Jump):
            await switch.run_priorities(channel, outcome.context, outcome.exten, outcome.priority)
        elif outcome != HANGUP and not channel.hangup.is_set():
            # Stasis failed: an originate into an application has no dialplan to go on in.
            switch.request_hangup(channel, NORMAL_CLEARING, soft=True)
        switch.destroy(channel)

    async def _hangup(self, params: dict[str, Any], path: dict[str, str]) -> Reply:
        switch = self._switch()
        channel = switch.channels.get(path["channelId"])
        if channel is None:
            return error_reply(404, "Channel not found")
        reason = str(params.get("reason", ""))
        reason_code = str(params.get("reason_code", ""))
        if reason and reason_code:
            return error_reply(400, "The reason and reason_code can't both be specified")
        cause = NORMAL_CLEARING
        if reason_code:
            if not reason_code.lstrip("-").isdigit():
                return error_reply(400, "Invalid reason for hangup reason code provided")
            cause = int(reason_code)
        elif reason:
            if reason not in HANGUP_REASONS:
                return error_reply(400, "Invalid reason for hangup reason provided")
            cause = HANGUP_REASONS[reason]
        switch.request_hangup(channel, EXPLICIT_SOFT_HANGUP, soft=True, hangup_cause=cause)
        return NO_CONTENT

    async def _answer(self, params: dict[str, Any], path: dict[str, str]) -> Reply:
        channel = self._controllable(path["channelId"])
        if isinstance(channel, Reply):
            return channel
        switch = self._switch()

        async def answer() -> None:
            switch.set_state(channel, "Up")

        done = switch.submit(channel, answer, wait=True)
        if done is None or not await done:
            return error_reply(500, "Failed to answer channel")
        return NO_CONTENT

    async def _play(self, params: dict[str, Any], path: dict[str, str]) -> Reply:
        channel = self._controllable(path["channelId"])
        if isinstance(channel, Reply):
            return channel
        switch = self._switch()
        for name in ("skipms", "offsetms"):
            value = str(params.get(name, "0"))
            if value.lstrip("-").isdigit() and int(value) < 0:
                return error_reply(400, f"{name} cannot be negative")
        medias = tuple(str(params.get("media", "")).split(","))
        playback_id = path.get("playbackId") or str(params.get("playbackId", "")) or None
        if not all(medias) or (playback_id is not None and playback_id in switch.playbacks):
            # Asterisk's answer when it cannot create the playback (no media, an id in use).
            return error_reply(500, "Failed to queue media for playback")
        playback = Playback(
            id=playback_id or switch.new_playback_id(),
            channel=channel,
            medias=medias,
            language=str(params.get("lang", "")) or channel.language,
            media_uri=medias[0],
        )
        switch.playbacks[playback.id] = playback
        switch.submit(channel, lambda: switch.play(playback), wait=False)
        return Reply(201, playback.json(), {"Location": f"/playbacks/{playback.id}"})

    async def _get_global(self, params: dict[str, Any], path: dict[str, str]) -> Reply:
        """As res/ari/resource_asterisk.c: an unset global reads as ""."""
        name = str(params.get("variable", ""))
        if not name:
            return error_reply(400, "Variable name is required")
        return Reply(200, {"value": self._switch().dialplan.globals.get(name, "")})

    async def _get_variable(self, params: dict[str, Any], path: dict[str, str]) -> Reply:
        name = str(params.get("variable", ""))
        if not name:
            return error_reply(400, "Variable name is required")
        channel = self._switch().channels.get(path["channelId"])
        if channel is None:
            return error_reply(404, "Provided channel was not found")
        functions = {
            "CALLERID(num)": channel.caller_number,
            "CALLERID(name)": channel.caller_name,
            "CHANNEL(name)": channel.name,
        }
        if name.endswith(")"):
            if name not in functions:
                return error_reply(500, "Unable to read provided function")
            return Reply(200, {"value": functions[name]})
        if name not in channel.variables:
            return error_reply(404, "Provided variable was not found")
        return Reply(200, {"value": channel.variables[name]})

    async def _set_variable(self, params: dict[str, Any], path: dict[str, str]) -> Reply:
        name = str(params.get("variable", ""))
        if not name:
            return error_reply(400, "Variable name is required")
        channel = self._control(path["channelId"])
        if isinstance(channel, Reply):
            return channel
        switch = self._switch()
        value = params.get("value")

        async def set_variable() -> None:
            switch.write_variable(channel, name, None if value is None else str(value))

        done = switch.submit(channel, set_variable, wait=True)
        if done is None or not await done:
            return error_reply(400, "Failed to execute function")
        return NO_CONTENT

    async def _continue(self, params: dict[str, Any], path: dict[str, str]) -> Reply:
        channel = self._controllable(path["channelId"])
        if isinstance(channel, Reply):
            return channel
        switch = self._switch()
        context = str(params.get("context", ""))
        extension = str(params.get("extension", ""))
        label = str(params.get("label", ""))
        try:
            priority = int(params.get("priority") or 0)
        except ValueError:
            priority = 0
        # The same rules as resource_channels.c: no target at all is the next priority.
        if context:
            exten = extension or "s"
        else:
            context, exten = channel.context, extension or channel.exten
        if label:
            number = int(label) if label.isdigit() else self.dialplan.label(context, exten, label)
            if number is None:
                return error_reply(404, "Requested label can not be found")
            if number == 0:
                return error_reply(400, "Requested priority is illegal")
        elif priority > 0:
            number = priority
        elif not params.get("context") and not extension:
            number = channel.priority + 1
        else:
            number = 1
        target = Jump(context, exten, number)

        async def leave() -> Jump:
            return target

        switch.submit(channel, leave, wait=False)
        return NO_CONTENT

    # -- REST handlers: playbacks and applications ----------------------------------------

    async def _get_playback(self, params: dict[str, Any], path: dict[str, str]) -> Reply:
        playback = self._switch().playbacks.get(path["playbackId"])
        if playback is None:
            return error_reply(404, "Playback not found")
        return Reply(200, playback.json())

    async def _stop_playback(self, params: dict[str, Any], path: dict[str, str]) -> Reply:
        playback = self._switch().playbacks.get(path["playbackId"])
        if playback is None:
            return error_reply(404, "Playback not found")
        if playback.state == "queued":
            playback.state = "canceled"
        # PlaybackFinished follows from the channel, after this answer (Asterisk does so too).
        playback.stop.set()
        return NO_CONTENT

    # An application is listed until Asterisk destroys it: at once when its WebSocket goes
    # and it holds no subscription (seen on a real one: a second client took `callrec` over,
    # left, and GET /applications was []); otherwise at a later tidy (`Switch.tidy_apps`),
    # inactive meanwhile (seen after a load run: `callrec` listed, 124 channel ids, no socket).

    async def _list_applications(self, params: dict[str, Any], path: dict[str, str]) -> Reply:
        apps = self._switch().apps.values()
        return Reply(200, [a.json() for a in apps])

    async def _get_application(self, params: dict[str, Any], path: dict[str, str]) -> Reply:
        stasis_app = self._switch().apps.get(path["applicationName"])
        if stasis_app is None:
            return error_reply(404, "Application not found")
        return Reply(200, stasis_app.json())

    async def _filter(self, params: dict[str, Any], path: dict[str, str]) -> Reply:
        """res/stasis/app.c `stasis_app_event_filter_set`: an empty body clears both lists;
        a list given replaces its own, one not given stays."""
        stasis_app = self._switch().apps.get(path["applicationName"])
        if stasis_app is None:
            return error_reply(404, "Application not found")
        lists = {k: params[k] for k in ("allowed", "disallowed") if k in params}
        if not lists:
            stasis_app.allowed, stasis_app.disallowed = [], []
        for key, given in lists.items():
            if not isinstance(given, list) or not all(
                isinstance(e, dict) and isinstance(e.get("type"), str) and e["type"] for e in given
            ):
                return error_reply(400, "Invalid format definition")
            setattr(stasis_app, key, [str(e["type"]) for e in given])
        return Reply(200, stasis_app.json())

    def _sources(
        self, params: dict[str, Any], path: dict[str, str], *, existing: bool = True
    ) -> tuple[StasisApp, list[str]] | Reply:
        """The application and channel ids named; `existing`: each channel must exist (a
        subscription does; ending one does not, res_stasis.c only looks for the forward)."""
        switch = self._switch()
        stasis_app = switch.apps.get(path["applicationName"])
        if stasis_app is None:
            return error_reply(404, "Application not found")
        sources = [s for s in str(params.get("eventSource", "")).split(",") if s]
        if not sources:
            return error_reply(400, "Missing parameter eventSource")
        channel_ids = []
        for source in sources:
            scheme, _, ident = source.partition(":")
            if scheme not in ("channel", "bridge", "endpoint", "deviceState"):
                return error_reply(400, "Invalid event source URI scheme")
            if scheme != "channel" or (existing and ident not in switch.channels):
                return error_reply(422, "Event source does not exist")
            channel_ids.append(ident)
        return stasis_app, channel_ids

    async def _subscribe(self, params: dict[str, Any], path: dict[str, str]) -> Reply:
        found = self._sources(params, path)
        if isinstance(found, Reply):
            return found
        stasis_app, channel_ids = found
        for channel_id in channel_ids:
            stasis_app.interest[channel_id] += 1
        return Reply(200, stasis_app.json())

    async def _unsubscribe(self, params: dict[str, Any], path: dict[str, str]) -> Reply:
        found = self._sources(params, path, existing=False)
        if isinstance(found, Reply):
            return found
        stasis_app, channel_ids = found
        if any(stasis_app.interest[channel_id] <= 0 for channel_id in channel_ids):
            return error_reply(422, "Event source was not subscribed to")
        for channel_id in channel_ids:
            stasis_app.interest[channel_id] -= 1
        return Reply(200, stasis_app.json())
