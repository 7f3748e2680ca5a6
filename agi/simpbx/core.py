"""The simulated PBX's switch: channels, their dialplan, Stasis, playbacks, subscriptions.

Theory of operation. Each channel has one task that plays Asterisk's channel thread: it runs
the dialplan (`agi.simpbx.dialplan`) priority after priority and emits `ChannelDialplan` as
each application starts. `Stasis()` is a loop over the controller's commands, queued by the
REST handlers and carried out one at a time in order, as Asterisk's control queue does: a
playback occupies the channel until it ends or is stopped, so a variable set while a prompt
plays takes effect (and its `ChannelVarset` is sent) only after the prompt, and `answer` and
`variable` requests wait for that, as on Asterisk. `play` and `continue` are queued and
answered at once.

Events go to an application while the channel is in its Stasis, or while the application is
subscribed to the channel (`POST /applications/{app}/subscription`); Stasis holds a
subscription of its own that ends with `StasisEnd`, so after `continue` only an explicit
subscription keeps the channel's events coming (`ari-traces/consent-bargein-press1.json`).
A hang-up wakes whatever the channel waits on: a playback ends `failed`, Stasis sends
`StasisEnd`, the queue sets its variables; then the hangup handlers run (their applications
still send `ChannelDialplan`) and the channel is destroyed (`MixMonitor`'s file is written
first, as MixMonitor closes it when the channel goes).

Hang-up requests carry the values a real Asterisk sends (see the traces): the caller hanging
up is `cause 16` without `soft`; `DELETE /channels` is `cause 32, soft`; the end of the
dialplan (Hangup(), a bridge the agent left, a caller gone from the queue) is `cause 16, soft`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any

from agi.simpbx.apps import dial, queue
from agi.simpbx.audio import MonitorFile
from agi.simpbx.calls import CallerScript, CallResult
from agi.simpbx.dialplan import Dialplan
from agi.simpbx.fastagi import agi
from agi.simpbx.model import (
    CAUSE_TEXT,
    DTMF_DURATION_MS,
    HANGUP,
    NEXT,
    NORMAL_CLEARING,
    RETURN,
    Channel,
    Command,
    Json,
    Jump,
    Outcome,
    Playback,
    StasisApp,
    any_set,
    timestamp,
)

log = logging.getLogger("callrec.simpbx")


class Switch:
    def __init__(
        self,
        *,
        dialplan: Dialplan,
        prompt_durations: Mapping[str, float],
        time_scale: float,
        epoch: int,
        entity_id: str,
        fastagi: tuple[str, int] | None = None,
    ) -> None:
        self.dialplan = dialplan
        self.fastagi = fastagi  # where AGI() connects, whatever its URL names
        self.prompt_durations = dict(prompt_durations)
        self.time_scale = time_scale
        self.epoch = epoch
        self.entity_id = entity_id
        self.apps: dict[str, StasisApp] = {}
        self.channels: dict[str, Channel] = {}
        self.playbacks: dict[str, Playback] = {}
        self._channel_seq = 0
        self._name_seq = 0
        self._playback_seq = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- time and tasks --------------------------------------------------------------

    @property
    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def script_seconds_since(self, moment: float) -> float:
        return (self.now - moment) / self.time_scale if self.time_scale > 0 else 0.0

    async def sleep(self, channel: Channel, seconds: float, *also: asyncio.Event) -> bool:
        """Wait `seconds` of script time; False if the channel hung up (or `also` fired)."""
        if channel.hangup.is_set() or any(event.is_set() for event in also):
            return False
        return not await any_set((channel.hangup, *also), seconds * self.time_scale)

    def spawn(self, coro: Coroutine[Any, Any, None], owner: Channel | None = None) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        if owner is not None:
            owner.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("simulated PBX task failed", exc_info=task.exception())

    async def cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        # Failures were logged when they happened; here only their end matters.
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- ids -------------------------------------------------------------------------

    def new_channel(
        self,
        *,
        tech: str,
        caller_number: str,
        script: CallerScript,
        caller_name: str = "",
        state: str = "Ring",
        channel_id: str | None = None,
    ) -> Channel:
        self._channel_seq += 1
        self._name_seq += 1
        channel = Channel(
            id=channel_id or f"{self.epoch}.{self._channel_seq}",
            name=f"{tech}-{self._name_seq:08x}",
            caller_name=caller_name,
            caller_number=caller_number,
            connected_name=caller_name,
            connected_number=caller_number,
            script=script,
            created_at=self.now,
            creationtime=timestamp(),
            state=state,
        )
        self.channels[channel.id] = channel
        return channel

    def new_playback_id(self) -> str:
        self._playback_seq += 1
        text = f"{self.epoch:016x}{self._playback_seq:016x}"
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"

    # -- events ----------------------------------------------------------------------

    def emit(self, kind: str, fields: Json, channels: Iterable[Channel]) -> None:
        targets = list(channels)
        event: Json = {"type": kind, "timestamp": timestamp(), **fields}
        event["asterisk_id"] = self.entity_id
        for app in list(self.apps.values()):
            if app.sink is not None and app.wants(targets) and app.allows(kind):
                app.sink({**event, "application": app.name})

    def tidy_apps(self) -> None:
        """Destroy the finished applications. Asterisk does this lazily (res_stasis.c
        `cleanup()`): when an application registers or unregisters and when a channel leaves
        Stasis(), never when a subscription ends. So an application whose WebSocket closed
        while it still held subscriptions stays listed, though inactive, after they end."""
        for name in [name for name, app in self.apps.items() if app.finished]:
            del self.apps[name]

    def emit_channel(self, kind: str, channel: Channel, **fields: Any) -> None:
        self.emit(kind, {**fields, "channel": channel.snapshot()}, [channel])

    def emit_playback(self, kind: str, playback: Playback) -> None:
        self.emit(kind, {"playback": playback.json()}, [playback.channel])

    def emit_dial(self, caller: Channel, peer: Channel, status: str, dialstring: str) -> None:
        fields = {
            "dialstatus": status,
            "forward": "",
            "dialstring": dialstring,
            "caller": caller.snapshot(),
            "peer": peer.snapshot(),
        }
        self.emit("Dial", fields, [caller, peer])

    def set_var(self, channel: Channel, name: str, value: str | None) -> None:
        """As pbx_builtin_setvar_helper: None deletes (announced only if it had a value)."""
        old = channel.variables.pop(name, None)
        if value is None:
            if old:
                self.emit_channel("ChannelVarset", channel, variable=name, value="")
            return
        channel.variables[name] = value
        self.emit_channel("ChannelVarset", channel, variable=name, value=value)

    def set_state(self, channel: Channel, state: str) -> None:
        if channel.state != state:
            channel.state = state
            self.emit_channel("ChannelStateChange", channel)

    # -- hang-up and destruction ---------------------------------------------------------

    def request_hangup(
        self, channel: Channel, cause: int, *, soft: bool, hangup_cause: int = NORMAL_CLEARING
    ) -> None:
        if channel.destroyed or channel.hangup.is_set():
            return
        fields: Json = {"cause": cause, "soft": True} if soft else {"cause": cause}
        channel.soft_request_sent = soft
        channel.hangup_cause = hangup_cause
        self.emit_channel("ChannelHangupRequest", channel, **fields)
        channel.hangup.set()
        channel.signal.set()

    def destroy(self, channel: Channel, *, quietly: bool = False) -> None:
        """The channel is gone: MixMonitor's file is closed, `ChannelDestroyed` goes to the
        subscribers (none when `quietly`: the PBX itself went away), REST answers 404."""
        if channel.destroyed:
            return
        channel.hangup.set()
        channel.signal.set()
        if not quietly and not channel.soft_request_sent:
            self.emit_channel("ChannelHangupRequest", channel, cause=NORMAL_CLEARING, soft=True)
            channel.soft_request_sent = True
        self.unbridge(channel)
        recorded = self._close_monitor(channel)
        if channel.outgoing_local:
            channel.app_name, channel.app_data = "AppDial2", "(Outgoing Line)"
        if not quietly:
            cause = channel.hangup_cause
            self.emit_channel(
                "ChannelDestroyed", channel, cause=cause, cause_txt=CAUSE_TEXT.get(cause, "")
            )
        channel.destroyed = True
        for command in channel.pending:
            if command.done is not None and not command.done.done():
                command.done.set_result(False)
        channel.pending.clear()
        for app in self.apps.values():
            app.interest.pop(channel.id, None)
        for playback_id in [p.id for p in self.playbacks.values() if p.channel is channel]:
            self.playbacks.pop(playback_id, None)
        self.channels.pop(channel.id, None)
        for task in channel.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if not channel.finished.done():
            channel.finished.set_result(self._result(channel, recorded))

    def _close_monitor(self, channel: Channel) -> int | None:
        """MixMonitor closes its file: the buffered frames and the header's sizes go to disk
        only now. Its size, or None when nothing recorded."""
        monitor = channel.monitor
        if monitor is None:
            return channel.monitor_bytes
        if channel.monitor_started_at is not None and not channel.monitor_bridged_only:
            monitor.add(self.script_seconds_since(channel.monitor_started_at))
        try:
            channel.monitor_bytes = monitor.close()
        except OSError as error:
            log.warning("MixMonitor could not write its file: %s", error.strerror)
            channel.monitor_file = None
        channel.monitor = None
        return channel.monitor_bytes

    def _result(self, channel: Channel, recorded: int | None) -> CallResult:
        return CallResult(
            channel_id=channel.id,
            stasis_status=channel.variables.get("STASISSTATUS") or None,
            variables={name: value for name, value in channel.variables.items() if value},
            recorded_file=channel.monitor_file if recorded is not None else None,
            recorded_bytes=recorded or 0,
            answered_by_agent=channel.answered,
            prompts_played=tuple(channel.prompts),
            digits_sent=tuple(channel.digits),
        )

    # -- bridging --------------------------------------------------------------------

    def bridge(self, one: Channel, other: Channel) -> None:
        for channel, peer in ((one, other), (other, one)):
            channel.bridge_peer = peer
            channel.bridge_started_at = self.now
            channel.answered = True
            self.set_var(channel, "BRIDGEPEER", peer.name)

    def unbridge(self, channel: Channel, *, talked: float | None = None) -> None:
        """End the bridge of `channel` (and its peer); `talked` is the script time it lasted
        when known exactly, else the elapsed time counts."""
        peer = channel.bridge_peer
        for party in (channel, peer):
            if party is None or party.bridge_started_at is None:
                continue
            elapsed = self.script_seconds_since(party.bridge_started_at)
            party.bridged_seconds += elapsed if talked is None else talked
            if party.monitor is not None and party.monitor_bridged_only:
                try:
                    party.monitor.add(elapsed if talked is None else talked)
                except OSError as error:
                    log.warning("MixMonitor could not write its file: %s", error.strerror)
            party.bridge_started_at = None
            party.bridge_peer = None

    # -- the scripted party ----------------------------------------------------------

    def start_dialplan(self, channel: Channel) -> None:
        """The channel's party starts acting: keys and its hang-up are timed from now."""
        channel.dialplan_started_at = self.now
        if channel.script.keys:
            self.spawn(self._press_keys(channel), channel)
        if channel.script.hang_up_at is not None:
            self.spawn(self._hang_up_later(channel, channel.script.hang_up_at), channel)

    async def _press_keys(self, channel: Channel) -> None:
        for at, digit in sorted(channel.script.keys):
            while True:
                origin = channel.first_playback_at or channel.dialplan_started_at or self.now
                remaining = origin + at * self.time_scale - self.now
                if remaining <= 0:
                    break
                # The first playback moves the key clock: wake when it starts.
                watch = () if channel.first_playback_at else (channel.first_playback,)
                await any_set((channel.hangup, *watch), remaining)
                if channel.hangup.is_set():
                    return
            if channel.hangup.is_set():
                return
            channel.digits.append(digit)
            channel.dtmf.put_nowait(digit)  # for an AGI command waiting for a key
            self.emit_channel(
                "ChannelDtmfReceived", channel, digit=digit, duration_ms=DTMF_DURATION_MS
            )

    async def _hang_up_later(self, channel: Channel, at: float) -> None:
        if await self.sleep(channel, at):
            self.request_hangup(channel, NORMAL_CLEARING, soft=False)

    # -- the dialplan ----------------------------------------------------------------

    def start_pbx(self, channel: Channel, context: str, exten: str, priority: int) -> None:
        self.spawn(self._pbx(channel, context, exten, priority), channel)

    async def _pbx(self, channel: Channel, context: str, exten: str, priority: int) -> None:
        self.start_dialplan(channel)
        await self.run_priorities(channel, context, exten, priority)
        await self.end_dialplan(channel)

    async def end_dialplan(self, channel: Channel) -> None:
        """The PBX is done with the channel: the soft hang-up, the hangup handlers (their
        applications still send ChannelDialplan), then the channel is destroyed."""
        if not channel.soft_request_sent and not channel.destroyed:
            self.emit_channel("ChannelHangupRequest", channel, cause=NORMAL_CLEARING, soft=True)
            channel.soft_request_sent = True
        channel.hangup.set()
        while channel.hangup_handlers and not channel.destroyed:
            context, exten, priority = channel.hangup_handlers.pop()
            await self.run_priorities(channel, context, exten, priority, handler=True)
        self.destroy(channel)

    def applications(self) -> dict[str, Callable[[Channel, str], Awaitable[Outcome]]]:
        return {
            "Stasis": self.app_stasis,
            "AGI": lambda channel, data: agi(self, channel, data),
            "GotoIf": self._app_gotoif,
            "Goto": self._app_goto,
            "Gosub": self._app_gosub,
            "ExecIf": self._app_execif,
            "MixMonitor": self._app_mixmonitor,
            "StopMixMonitor": self._app_stopmixmonitor,
            "Queue": lambda channel, data: queue(self, channel, data),
            "Dial": lambda channel, data: dial(self, channel, data),
            "Wait": self._app_wait,
            "Set": self._app_set,
            "MSet": self._app_mset,
            "Answer": self._app_answer,
            "Hangup": self._app_hangup,
            "NoOp": self._app_nothing,
            "Verbose": self._app_nothing,
            "Log": self._app_nothing,
            "UserEvent": self._app_userevent,
        }

    async def run_priorities(
        self, channel: Channel, context: str, exten: str, priority: int, *, handler: bool = False
    ) -> str:
        """Run the dialplan from a location until Return (RETURN), a hang-up or the end; a
        hangup `handler` runs on a channel that is already hung up."""
        apps = self.applications()
        while handler or not channel.hangup.is_set():
            step = self.dialplan.priority(context, exten, priority)
            if step is None:
                log.info(
                    "%s fell off the dialplan at %s,%s,%d", channel.id, context, exten, priority
                )
                return HANGUP
            data = step.render(self.variables(channel, context, exten))
            channel.locate(context, exten, priority, step.app, data)
            self.emit_channel(
                "ChannelDialplan", channel, dialplan_app=step.app, dialplan_app_data=data
            )
            if step.app == "Return":
                return RETURN
            app = apps.get(step.app)
            if app is None:
                log.warning("the simulated dialplan has no application %s", step.app)
                return HANGUP
            outcome = await app(channel, data)
            if isinstance(outcome, Jump):
                context, exten, priority = outcome.context, outcome.exten, outcome.priority
            elif outcome == NEXT:
                priority += 1
            else:
                return outcome
        return HANGUP

    def variables(self, channel: Channel, context: str, exten: str) -> dict[str, str]:
        """What `${...}` sees: globals, the channel's variables, and the built-in ones."""
        return {
            **self.dialplan.globals,
            **channel.variables,
            "EXTEN": exten,
            "CONTEXT": context,
            "CHANNEL": channel.name,
        }

    def _target(self, channel: Channel, spec: str) -> Jump | None:
        """`[[context,]exten,]priority|label` from the channel's location, as Goto reads it."""
        parts = [part.strip() for part in spec.split(",")]
        context, exten = channel.context, channel.exten
        if len(parts) == 3:
            context, exten = parts[0], parts[1]
        elif len(parts) == 2:
            exten = parts[0]
        where = parts[-1]
        number = int(where) if where.isdigit() else self.dialplan.label(context, exten, where)
        if number is None or self.dialplan.priority(context, exten, number) is None:
            log.warning("%s: no dialplan location %s", channel.id, spec)
            return None
        return Jump(context, exten, number)

    async def _app_goto(self, channel: Channel, data: str) -> Outcome:
        return self._target(channel, data) or HANGUP

    async def _app_gotoif(self, channel: Channel, data: str) -> Outcome:
        condition, _, labels = data.partition("?")
        when_true, _, when_false = labels.partition(":")
        target = when_true if condition.strip() not in ("", "0") else when_false
        if not target:
            return NEXT
        return self._target(channel, target) or HANGUP

    async def _app_gosub(self, channel: Channel, data: str) -> Outcome:
        """Gosub(context,exten,priority(args)): the routine runs, then the next priority."""
        spec, _, rest = data.partition("(")
        arguments = rest.rsplit(")", 1)[0].split(",") if rest else []
        target = self._target(channel, spec)
        if target is None:
            return HANGUP
        saved = {f"ARG{n}": channel.variables.get(f"ARG{n}") for n in range(1, 10)}
        for index, argument in enumerate(arguments, start=1):
            channel.variables[f"ARG{index}"] = argument
        outcome = await self.run_priorities(channel, target.context, target.exten, target.priority)
        for name, old in saved.items():  # the routine's arguments are local to it
            if old is None:
                channel.variables.pop(name, None)
            else:
                channel.variables[name] = old
        return NEXT if outcome == RETURN else HANGUP

    async def _app_execif(self, channel: Channel, data: str) -> Outcome:
        """ExecIf(condition?App(args)[:App(args)]): run one application in place."""
        condition, _, branches = data.partition("?")
        depth, split = 0, len(branches)
        for index, char in enumerate(branches):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if char == ":" and depth == 0:
                split = index
                break
        chosen = branches[:split] if condition.strip() not in ("", "0") else branches[split + 1 :]
        if not chosen:
            return NEXT
        name, _, rest = chosen.partition("(")
        app = self.applications().get(name.strip())
        if app is None:
            log.warning("ExecIf: the simulated dialplan has no application %s", name)
            return HANGUP
        return await app(channel, rest.rsplit(")", 1)[0])

    async def _app_userevent(self, channel: Channel, data: str) -> Outcome:
        """As apps/app_userevent.c: `name,key:value,...`; an argument without a colon is
        skipped, values are stripped."""
        name, *extra = data.split(",")
        fields: dict[str, str] = {}
        for argument in extra:
            key, colon, value = argument.partition(":")
            if colon:
                fields[key] = value.strip()
        self.emit_channel("ChannelUserevent", channel, eventname=name, userevent=fields)
        return NEXT

    async def _app_nothing(self, channel: Channel, data: str) -> Outcome:
        return NEXT

    async def _app_mixmonitor(self, channel: Channel, data: str) -> Outcome:
        file, _, options = data.partition(",")
        if not file.startswith("/"):
            # A relative name would go to Asterisk's monitor spool, which the simulator has not.
            log.warning("MixMonitor: %r is not an absolute path; nothing records", file)
            return NEXT
        if channel.monitor is not None:
            log.warning("MixMonitor: %s already records; a second one is not started", channel.id)
            return NEXT
        try:
            channel.monitor = MonitorFile(Path(file))
        except OSError as error:
            log.warning("MixMonitor could not open its file: %s", error.strerror)
            return NEXT
        channel.monitor_file = file
        channel.monitor_bridged_only = "b" in options
        channel.monitor_started_at = self.now
        self.set_var(channel, "MIXMONITOR_FILENAME", file)
        return NEXT

    async def _app_stopmixmonitor(self, channel: Channel, data: str) -> Outcome:
        self._close_monitor(channel)
        return NEXT

    async def _app_wait(self, channel: Channel, data: str) -> Outcome:
        try:
            seconds = float(data or 0)
        except ValueError:
            seconds = 0.0
        return NEXT if await self.sleep(channel, seconds) else HANGUP

    async def _app_set(self, channel: Channel, data: str) -> Outcome:
        name, _, value = data.partition("=")
        self.write_variable(channel, name.strip(), value)
        return NEXT

    async def _app_mset(self, channel: Channel, data: str) -> Outcome:
        for pair in data.split(","):
            name, sep, value = pair.partition("=")
            if sep:
                self.write_variable(channel, name.strip(), value)
        return NEXT

    def write_variable(self, channel: Channel, name: str, value: str | None) -> None:
        """Set a variable, or write one of the few dialplan functions the dialplan uses:
        `MASTER_CHANNEL(VAR)` (the queue member's Gosub naming the agent on the caller's
        channel), `CHANNEL(hangup_handler_push)`, `CHANNEL(language)`, and `ARRAY(A,B,...)`
        (each variable in turn from the comma-separated value, missing ones set empty, as
        funcs/func_strings.c `array` does)."""
        if not name.endswith(")"):
            self.set_var(channel, name, value)
            return
        function, _, argument = name[:-1].partition("(")
        if function == "MASTER_CHANNEL":
            self.set_var(channel.master or channel, argument, value)
        elif function == "CHANNEL" and argument == "hangup_handler_push" and value:
            target = [part.strip() for part in value.split(",")]
            if len(target) == 3 and target[2].isdigit():
                channel.hangup_handlers.append((target[0], target[1], int(target[2])))
        elif function == "CHANNEL" and argument == "language" and value:
            channel.language = value
        elif function == "ARRAY":
            values = (value or "").split(",")
            for index, variable in enumerate(argument.split(",")):
                self.set_var(channel, variable, values[index] if index < len(values) else "")
        else:
            log.info("%s: the simulator ignores writing %s", channel.id, name)

    async def _app_answer(self, channel: Channel, data: str) -> Outcome:
        self.set_state(channel, "Up")
        return NEXT

    async def _app_hangup(self, channel: Channel, data: str) -> Outcome:
        cause = int(data) if data.isdigit() else NORMAL_CLEARING
        self.request_hangup(channel, NORMAL_CLEARING, soft=True, hangup_cause=cause)
        return HANGUP

    # -- Stasis ----------------------------------------------------------------------

    async def app_stasis(self, channel: Channel, data: str) -> Outcome:
        self.set_var(channel, "STASISSTATUS", "")
        name, *args = data.split(",")
        app = self.apps.get(name)
        if app is None or not app.active:
            # No WebSocket for the application: Stasis() returns at once and the dialplan
            # goes on; ours then records nothing.
            log.info("Stasis app %s not active; %s goes on in the dialplan", name, channel.id)
            self.set_var(channel, "STASISSTATUS", "FAILED")
            return NEXT
        channel.stasis_app = name
        channel.stasis_reached = True
        app.interest[channel.id] += 1
        self.emit_channel("StasisStart", channel, args=args)
        target = await self._control_loop(channel)
        for command in channel.pending:
            if command.done is not None and not command.done.done():
                command.done.set_result(False)
        channel.pending.clear()
        self.emit_channel("StasisEnd", channel)
        channel.stasis_app = None
        app = self.apps.get(name)
        if app is not None and app.interest[channel.id] > 0:
            app.interest[channel.id] -= 1
        self.tidy_apps()
        self.set_var(channel, "STASISSTATUS", "SUCCESS")
        if channel.hangup.is_set() or target is None:
            return HANGUP
        return target

    async def _control_loop(self, channel: Channel) -> Jump | None:
        while not channel.hangup.is_set():
            if channel.pending:
                command = channel.pending.popleft()
                target = await command.run()
                if command.done is not None and not command.done.done():
                    command.done.set_result(True)
                if target is not None:
                    return target
                continue
            channel.signal.clear()
            await channel.signal.wait()
        return None

    def submit(
        self, channel: Channel, run: Callable[[], Awaitable[Jump | None]], *, wait: bool
    ) -> asyncio.Future[bool] | None:
        done = asyncio.get_running_loop().create_future() if wait else None
        channel.pending.append(Command(run, done))
        channel.signal.set()
        return done

    def media_duration(self, media: str) -> float | None:
        """Seconds a `sound:` media plays, None when Asterisk would find no such file (the
        simulator plays only `sound:` media, from `prompt_durations`)."""
        scheme, _, name = media.partition(":")
        if scheme != "sound":
            return None
        return self.prompt_durations.get(name)

    async def play(self, playback: Playback) -> Jump | None:
        channel = playback.channel
        if playback.state == "canceled":
            # Deleted while queued: Asterisk publishes it once, finished, never started.
            playback.state = "done"
            self.emit_playback("PlaybackFinished", playback)
            self.playbacks.pop(playback.id, None)
            return None
        for index, media in enumerate(playback.medias):
            playback.media_uri = media
            playback.state = "playing"
            self.emit_playback("PlaybackStarted", playback)
            channel.prompts.append(media.partition(":")[2] or media)
            if channel.first_playback_at is None:
                channel.first_playback_at = self.now
                channel.first_playback.set()
            duration = self.media_duration(media)
            if duration is not None:
                await self.sleep(channel, duration, playback.stop)
            last = index == len(playback.medias) - 1
            hung_up = channel.hangup.is_set()
            if playback.stop.is_set():
                playback.state = "done"
            elif duration is None or hung_up:
                playback.state = "failed" if last or hung_up else "continuing"
            else:
                playback.state = "done" if last else "continuing"
            if playback.state == "continuing":
                self.emit_playback("PlaybackContinuing", playback)
                continue
            break
        self.emit_playback("PlaybackFinished", playback)
        self.playbacks.pop(playback.id, None)
        return None
