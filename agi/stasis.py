"""The Stasis application: ARI events in, flow events out, flow commands as REST calls.

Theory of operation. One task reads the events WebSocket (`AriClient.events`) and routes
each event to the call it belongs to; each call has its own queue and worker task, so the
events of one channel are handled in order and a slow call never blocks the others. A
worker turns ARI events into flow events (`StasisStart` -> `CallEntered` or
`CallbackPlaced`, `ChannelDtmfReceived` -> `DigitPressed` for a key `flows.keys` hears,
`PlaybackFinished` -> `PromptFinished`, a hang-up -> `CallerHungUp`) and the session
(`agi.session`) carries out the flow's commands through `AriChannel`.

Asterisk quirks this relies on (see `ari-traces/`):
* `PlaybackFinished` still arrives after `DELETE /playbacks/{id}`; we choose playback ids
  ourselves (`POST /channels/{id}/play/{playbackId}`) so an event that overtakes the REST
  reply still finds its call, and the flow ignores stale tokens.
* After `continue`, a channel's events stop unless the app subscribed to it first, so the
  subscription is made before the variables are set and the channel continues. Through it
  we see the queue's `BRIDGEPEER`/`ANSWEREDTIME` (answered or missed) and `ChannelDestroyed`.
* A caller who hangs up while in Stasis produces `ChannelHangupRequest`, `PlaybackFinished`,
  `StasisEnd` and no `ChannelDestroyed` for an unsubscribed channel: `StasisEnd` before our
  `continue` ends the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from agi.ari import AriClient
from agi.ari_events import AriEvent, Reconnected
from agi.calls import Rejected, callback_session, callee_session, inbound_session
from agi.session import (
    CallSession,
    SessionDeps,
    finish_call,
    has_audio,
    release_pause,
)
from flows.errors import AsteriskError, ChannelGone, StorageError
from flows.events import (
    CallerHungUp,
    ControlLost,
    DigitPressed,
    DigitTimedOut,
    Event,
    PromptFailed,
    PromptFinished,
)
from flows.keys import heard
from flows.numbers import shown
from flows.outcome import QUEUE_VARIABLES, Outcome, QueueObserver, outcome_after_restart
from flows.policy import Policy
from flows.shedding import DECISION_LAG_BOUND, Load, ShedBounds, shed_reason
from storage.ports import CallRow

log = logging.getLogger("callrec.stasis")

# What the dialplan passes through unchanged, in ARRAY() and in MixMonitor(${CALLREC_FILE},b)
# alike: no separator, quote, backslash or space (application and function arguments are
# split at commas, their quotes and escapes stripped).
_ARRAY_VALUE = re.compile(r"[A-Za-z0-9_./+-]*")

PROMPT_LANGUAGE = "sl"  # the prompts are Slovenian; Asterisk looks in sounds/sl/
RECENT_CALLS = 10_000  # channel -> call id pairs kept for look-ups after a call ends
SHUTDOWN_GRACE = 5.0  # seconds live calls get to reach a decision before failing closed
UNKNOWN_CHANNEL_GRACE = 1.0  # seconds a listed channel's StasisStart may lag the listing
# New calls are shed (handed on at once, unrecorded, no prompt) while more REST requests
# than this wait for a connection: Asterisk is behind, and a call served late costs it far
# more work than one `continue` now. Default: this many times the connection limit.
SHED_BACKLOG_FACTOR = 2
SHED_LOG_EVERY = 100  # a shed call is logged at warning level once per this many
# The events `_route` acts on; Asterisk is asked to send no others (`_filter_events`), and
# the client drops any that come anyway unread.
WANTED_EVENTS = frozenset(
    {
        "StasisStart",
        "StasisEnd",
        "PlaybackFinished",
        "ChannelDtmfReceived",
        "ChannelVarset",
        "ChannelUserevent",
        "ChannelHangupRequest",
        "ChannelDestroyed",
    }
)
# The dialplan's version, a global: from 2 on, the hangup handler sends the queue's outcome
# in one user event (ENDED_EVENT), and Asterisk is asked for no ChannelVarset, about 45 a
# call it would otherwise build and send. An older (or unreadable) dialplan: the variables.
DIALPLAN_VERSION_VARIABLE = "CALLREC_DIALPLAN_VERSION"
ENDED_EVENT = "CallrecEnded"
REPORTS_END_FROM = 2


class _Ended:
    """Queue marker: the channel is gone; finish the call with this outcome source."""

    def __init__(self, destroyed: bool) -> None:
        self.destroyed = destroyed


_Item = Event | _Ended


class AriChannel:
    """`agi.ports.ChannelPort` over ARI for one channel."""

    def __init__(
        self, client: AriClient, channel_id: str, call: _Call, *, up: bool = False
    ) -> None:
        self._client = client
        self._channel_id = channel_id
        self._call = call
        self._up = up  # answered before it entered Stasis (the inbound dialplan's Answer())
        self.subscribed = False

    async def answer(self) -> list[Event]:
        # The subscription that keeps the channel's events coming after `continue` is made
        # now, beside the answer, while the caller listens to the prompt: the digit ->
        # continue path then has one round trip less. A failure here is tried once more
        # before recording (`start_recording`), which it would otherwise keep from starting.
        if self._up:
            # The dialplan answered: a request less per call, for Asterisk and for us.
            await self._try_subscribe()
            return []
        answered, _ = await asyncio.gather(
            self._client.answer(self._channel_id), self._try_subscribe(), return_exceptions=True
        )
        if isinstance(answered, BaseException):
            raise answered
        return []

    async def play(self, prompt: str, *, barge_in: bool, token: int) -> list[Event]:
        # Registered before the request: PlaybackFinished may overtake the REST reply.
        playback_id = uuid.uuid4().hex
        self._call.playbacks[playback_id] = token
        await self._client.play(
            self._channel_id, f"sound:{prompt}", lang=PROMPT_LANGUAGE, playback_id=playback_id
        )
        return []

    async def stop_prompt(self, token: int) -> list[Event]:
        # Not waited for: the flow goes on whether or not a prompt stops (a failure is
        # harmless), so the decision's commit and variables overlap this round trip.
        # Asterisk runs `continue` only after the playback ended, so the order holds.
        for playback_id, playing in list(self._call.playbacks.items()):
            if playing == token:
                self._call.spawn(self._stop(playback_id))
        return []

    async def _stop(self, playback_id: str) -> None:
        try:
            await self._client.stop_playback(playback_id)
        except AsteriskError as error:
            log.warning("channel %s: prompt not stopped: %s", shown(self._channel_id), error)

    async def wait_for_digit(self, limit: timedelta, token: int) -> list[Event]:
        self._call.start_timer(limit, token)
        return []

    async def cancel_wait(self, token: int) -> list[Event]:
        self._call.cancel_timer()
        return []

    async def _try_subscribe(self) -> None:
        if self.subscribed:
            return
        try:
            await self._client.subscribe(self._channel_id)
        except ChannelGone:
            raise
        except AsteriskError as error:
            log.warning("channel %s: not subscribed: %s", shown(self._channel_id), error)
        else:
            self.subscribed = True

    async def start_recording(self, call_id: str, file: str) -> list[Event]:
        # Fail closed: without the subscription the call's end (and its file) would go
        # unseen, so nothing records unless it is in place.
        if not self.subscribed:
            await self._client.subscribe(self._channel_id)
            self.subscribed = True
        await self._set_all(
            call_id, CALLREC_CALL_ID=call_id, CALLREC_FILE=file, CALLREC_RECORD="yes"
        )
        return []

    async def skip_recording(self, call_id: str) -> list[Event]:
        await self._try_subscribe()  # for the outcome (answered or missed) only
        await self._set_all(call_id, CALLREC_CALL_ID=call_id, CALLREC_RECORD="no")
        return []

    async def _set_all(self, call_id: str, **variables: str) -> None:
        """The call's variables in one request: `ARRAY(A,B,...)=a,b,...` sets each in turn
        (funcs/func_strings.c, `array`) on the channel's own thread while it is in Stasis,
        so the dialplan sees all of them or none, and CALLREC_RECORD, named last, never
        without the rest. A value the dialplan would split or unquote is refused: the call
        then goes on unrecorded.

        Not `POST /channels/{id}/variables` with `report_events` (2026), which would let
        ChannelDestroyed carry the queue's variables and spare the app every ChannelVarset:
        Asterisk then publishes a channel snapshot at each variable set on the channel
        (main/stasis_channels.c), and at 100 calls/s that cost it more than the events
        saved (README, "Live load")."""
        for name, value in variables.items():
            if not _ARRAY_VALUE.fullmatch(value):
                raise AsteriskError(
                    f"{name} {shown(value, 80)} cannot pass through the dialplan whole",
                    call_id=call_id,
                )
        await self._client.set_variable(
            self._channel_id,
            f"ARRAY({','.join(variables)})",
            ",".join(variables.values()),
        )

    async def notice_callee(self, call_id: str, line: str) -> list[Event]:
        await self._client.set_variable(self._channel_id, "CALLREC_NOTICE", "yes")
        return []

    async def show_caller_id(self, number: str) -> None:
        await self._client.set_variable(self._channel_id, "CALLREC_CALLBACK_CID", number)

    async def continue_in_dialplan(self) -> list[Event]:
        # A 409 (not in Stasis) is success too: after a `continue` that timed out, the
        # first one went through.
        await self._client.continue_in_dialplan(self._channel_id)
        return []

    async def hangup(self) -> list[Event]:
        await self._client.hangup(self._channel_id)
        return []


@dataclass(eq=False)
class _Call:
    channel_id: str
    queue: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)
    playbacks: dict[str, int] = field(default_factory=dict)
    observer: QueueObserver = field(default_factory=QueueObserver)
    session: CallSession | None = None
    worker: asyncio.Task[None] | None = None
    timer: asyncio.Task[None] | None = None
    timer_scale: float = 1.0
    epoch: int = 1  # the events connection during which the call entered Stasis
    channel: AriChannel | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def start_timer(self, limit: timedelta, token: int) -> None:
        self.cancel_timer()

        async def fire() -> None:
            await asyncio.sleep(limit.total_seconds() * self.timer_scale)
            self.queue.put_nowait(DigitTimedOut(token))

        self.timer = asyncio.get_running_loop().create_task(fire())

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class StasisApp:
    def __init__(
        self,
        client: AriClient,
        deps: SessionDeps,
        policy: Policy,
        *,
        timer_scale: float = 1.0,
        shed_backlog: int | None = None,
        shed_decision_lag: float | None = None,
    ) -> None:
        self._client = client
        self._shed_bounds = ShedBounds(
            ari_backlog=shed_backlog
            if shed_backlog is not None
            else SHED_BACKLOG_FACTOR * client.max_connections,
            decision_lag=DECISION_LAG_BOUND if shed_decision_lag is None else shed_decision_lag,
        )
        self.shed = 0  # calls handed on unrecorded because Asterisk or we were behind
        self._deps = deps
        self._policy = policy
        self._calls: dict[str, _Call] = {}
        self._accepting = True
        self._timer_scale = timer_scale  # demo/replay run prompts and timeouts faster
        self._connections = 1  # events connections so far (the first counts as 1)
        self._background: set[asyncio.Task[None]] = set()
        self.handled = 0  # calls that got a session (for `serve` status lines and tests)
        self._recent: dict[str, str] = {}  # channel id -> call id, the last RECENT_CALLS
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def live_calls(self) -> int:
        return len(self._calls)

    def use_policy(self, policy: Policy) -> None:
        """Serve calls that arrive from now on under `policy` (a reloaded configuration).
        A call in progress keeps the policy it started with: its flow holds its line."""
        self._policy = policy

    def is_live(self, channel_id: str) -> bool:
        """Whether the controller still works on this channel (its file not yet stored)."""
        return channel_id in self._calls

    def call_id_of(self, channel_id: str) -> str | None:
        """Our call id for a recent Asterisk channel (for replay and status)."""
        return self._recent.get(channel_id)

    def recent_call_ids(self) -> list[str]:
        """Our call ids of the recent channels, oldest first (for replay and status)."""
        return list(self._recent.values())

    async def run(self) -> None:
        """Serve until cancelled. Every (re)connection reconciles the channels in Stasis, in
        the background, so that new calls are served meanwhile."""
        self._spawn(self._reconcile_when_connected())
        try:
            async for item in self._client.events(WANTED_EVENTS, QUEUE_VARIABLES):
                if isinstance(item, Reconnected):
                    self._connections += 1
                    log.warning("ARI events reconnected (attempt %d); reconciling", item.attempt)
                    self._spawn(self._reconnected(self._connections))
                    continue
                try:
                    self._route(item)
                except Exception:  # one bad event must not stop the others being served
                    log.exception("event %s could not be handled", item.type)
        finally:
            for task in list(self._background):
                task.cancel()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reconcile_when_connected(self) -> None:
        # Subscriptions are refused until Asterisk knows the app, i.e. until the events
        # WebSocket is up; so the start-up look waits for it.
        await self._client.wait_connected()
        await self._filter_events()
        await self._reconcile(1)

    async def _reconnected(self, epoch: int) -> None:
        await self._filter_events()
        await self._reconcile(epoch)

    async def _filter_events(self) -> None:
        """Ask Asterisk for the events `_route` reads only (a new application starts with
        no filter, so at every connection). Until this is done, and where it fails, the
        client drops the others itself."""
        wanted = WANTED_EVENTS | {"ApplicationReplaced"}
        if await self._reports_end():
            wanted -= {"ChannelVarset"}
        await self._client.filter_events(wanted)

    async def _reports_end(self) -> bool:
        """Whether the dialplan's hangup handler reports each call's end (`ENDED_EVENT`)."""
        try:
            version = await self._client.get_global(DIALPLAN_VERSION_VARIABLE)
        except AsteriskError as error:
            log.warning("could not read the dialplan's version (%s); reading variables", error)
            return False
        if version.isdecimal() and int(version) >= REPORTS_END_FROM:
            return True
        log.warning(
            "the dialplan predates end reports (%s %s): install it again with `callrec "
            "asterisk install`; until then the queue's variables are read one by one",
            DIALPLAN_VERSION_VARIABLE,
            shown(version, 20) or "unset",
        )
        return False

    def _route(self, event: AriEvent) -> None:
        channel_id = event.channel_id
        if event.type == "StasisStart" and channel_id is not None:
            self._stasis_start(event, channel_id)
            return
        if event.type.startswith("Playback") and event.playback_id is not None:
            call = self._call_of_playback(event.playback_id, channel_id)
            if call is not None and event.type == "PlaybackFinished":
                token = call.playbacks.pop(event.playback_id)
                # "failed": a missing sound, or the channel going away. Either way the
                # caller did not hear it, and a notice not heard cannot count as given.
                failed = _playback_state(event) == "failed"
                call.queue.put_nowait(PromptFailed(token) if failed else PromptFinished(token))
            return
        call = self._calls.get(channel_id or "")
        if call is None:
            log.debug("%s for a channel that is not ours; ignored", event.type)
            return
        match event.type:
            case "ChannelDtmfReceived" if event.digit is not None:
                if heard(event.digit):
                    call.queue.put_nowait(DigitPressed(event.digit))
                else:  # flows.keys: it means nothing; the prompt plays on, the timer runs on
                    log.info("channel %s: ignored DTMF %s", shown(call.channel_id), event.digit)
            case "ChannelVarset" if event.variable is not None:
                call.observer.saw_variable(event.variable, event.value or "")
            case "ChannelUserevent" if event.eventname == ENDED_EVENT:
                for name, value in event.userevent.items():
                    if name in QUEUE_VARIABLES:
                        call.observer.saw_variable(name, value)
            case "ChannelHangupRequest":
                # Asterisk reports the hang-up first, then PlaybackFinished, then StasisEnd;
                # the flow must know before it takes a finished prompt for a heard one.
                call.queue.put_nowait(CallerHungUp())
            case "StasisEnd":
                # Whether this ends the call depends on whether our continue went through,
                # which only the worker knows in order: it decides.
                call.queue.put_nowait(_Ended(destroyed=False))
            case "ChannelDestroyed":
                call.queue.put_nowait(_Ended(destroyed=True))
            case _:
                pass

    def _call_of_playback(self, playback_id: str, channel_id: str | None) -> _Call | None:
        """The call that started `playback_id`: the one on the playback's target channel,
        else (a target that is not a channel we know) any call that started it."""
        call = self._calls.get(channel_id or "")
        if call is not None and playback_id in call.playbacks:
            return call
        for call in self._calls.values():
            if playback_id in call.playbacks:
                return call
        return None

    def _stasis_start(self, event: AriEvent, channel_id: str) -> None:
        if channel_id in self._calls:
            log.warning("channel %s entered Stasis twice; ignored", shown(channel_id))
            return
        call = _Call(channel_id, timer_scale=self._timer_scale, epoch=self._connections)
        self._calls[channel_id] = call
        self.idle.clear()
        load = Load(
            ari_backlog=self._client.backlog,
            decision_lag=self._deps.lag.seconds(),
            ari_wait=self._client.expected_wait,
        )
        reason = shed_reason(load, self._shed_bounds)
        if reason is not None:
            self.shed += 1
            level = logging.WARNING if self.shed % SHED_LOG_EVERY == 1 else logging.INFO
            log.log(
                level,
                "channel %s shed: %s; handed on unrecorded (%d shed so far)",
                shown(channel_id),
                reason,
                self.shed,
            )
            work = self._shed_call(call, event, reason)
        else:
            work = self._work(call, event)
        call.worker = asyncio.get_running_loop().create_task(work)

    async def _shed_call(self, call: _Call, start: AriEvent, reason: str) -> None:
        """Shedding: one `continue` now, before anything else; the ledger learns of the call
        afterwards. No prompt was played, so the decision is "none": a consent line's caller
        is neither told nor recorded and a sales call goes unrecorded, which is lawful (no
        recording without notice); the caller still reaches the queue."""
        try:
            if not await self._release(call.channel_id, skip=False):
                return  # the caller left at once: nothing to record or call back
            opened = await self._open_session(call, start)
            if isinstance(opened, Rejected):
                return
            session, _ = opened
            call.session = session
            self._recent[call.channel_id] = session.call_id
            await session.shed(reason)
            while not isinstance(await call.queue.get(), _Ended):
                pass
            await self._end(call, session)
        except Exception:
            log.exception("shed call on channel %s failed", shown(call.channel_id))
        finally:
            self._forget(call)

    async def _open_session(self, call: _Call, event: AriEvent) -> tuple[CallSession, Event] | (
        Rejected
    ):
        if not self._accepting:
            return Rejected("the controller is shutting down")
        snapshot = event.raw.get("channel")
        up = isinstance(snapshot, Mapping) and snapshot.get("state") == "Up"
        channel = AriChannel(self._client, call.channel_id, call, up=up)
        call.channel = channel
        route = event.args[0] if event.args else "inbound"
        args = event.args[1:]
        deps, policy = self._deps, self._policy
        if route == "callback" and args:
            return await callback_session(
                deps,
                policy,
                channel,
                channel_id=call.channel_id,
                customer=args[0],
                line_name=args[1] if len(args) > 1 else None,
                agent=event.caller_number,
            )
        if route == "callee" and args:
            return await callee_session(
                deps, policy, channel, channel_id=call.channel_id, parent_call_id=args[0]
            )
        if route == "inbound":
            dialed = args[0] if args else (event.exten or "")
            return await inbound_session(
                deps,
                policy,
                channel,
                channel_id=call.channel_id,
                dialed=dialed,
                caller=event.caller_number,
            )
        return Rejected(f"unknown Stasis route {shown(route)}")

    async def _work(self, call: _Call, start: AriEvent) -> None:
        try:
            opened = await self._open_session(call, start)
            if isinstance(opened, Rejected):
                log.warning("channel %s goes on unrecorded: %s", call.channel_id, opened.reason)
                await self._release(call.channel_id)
                return
            session, first = opened
            call.session = session
            self.handled += 1
            self._recent[call.channel_id] = session.call_id
            while len(self._recent) > RECENT_CALLS:
                del self._recent[next(iter(self._recent))]
            await session.begin(first)
            while True:
                item = await call.queue.get()
                if isinstance(item, _Ended):
                    if not item.destroyed and session.continued and self._watched(call):
                        continue  # StasisEnd after our continue: the call goes on
                    await self._end(call, session)
                    return
                await session.feed(item)
        except Exception:
            # A fault in our own code must not leave the caller in Stasis or record anything:
            # log it, and hand the channel on unrecorded.
            log.exception("call on channel %s failed; going on unrecorded", call.channel_id)
            if call.session is None or not call.session.continued:
                await self._release(call.channel_id)
        finally:
            self._forget(call)

    @staticmethod
    def _watched(call: _Call) -> bool:
        """Whether the channel's events go on after it left Stasis (our subscription). If
        not, its end would never be seen: the call is finished when it leaves, as missed
        (a call that went on and was not seen answered is called back, not forgotten)."""
        return call.channel is not None and call.channel.subscribed

    async def _end(self, call: _Call, session: CallSession) -> None:
        if not session.continued:
            await session.hung_up()
        call.observer.continued = session.continued
        lost_events = call.epoch != self._connections
        if (
            call.observer.needs_audio(reports_lost=lost_events)
            and session.recording_file is not None
        ):
            recorded = await asyncio.to_thread(has_audio, session.recording_file)
            call.observer.saw_recorded_audio(recorded)
        outcome = call.observer.outcome()
        if await session.in_ledger():
            await finish_call(
                session.call_id,
                outcome,
                self._deps,
                agent=call.observer.agent(session.start.direction),
                file=session.recording_file,
            )

    async def _release(self, channel_id: str, *, skip: bool = True) -> bool:
        """No session: the caller goes on unrecorded (never recorded by default: the
        dialplan clears CALLREC_RECORD on entry). Hanging up is never the way out: a failing
        `continue` is tried again for as long as the channel is in Stasis (404: gone; 409:
        no longer in Stasis, e.g. an earlier try that timed out went through). False: the
        channel is gone."""
        attempt = 0
        while True:
            try:
                if skip:
                    with contextlib.suppress(AsteriskError):
                        await self._client.set_variable(channel_id, "CALLREC_RECORD", "no")
                    skip = False
                await self._client.continue_in_dialplan(channel_id)
            except ChannelGone:
                return False
            except AsteriskError as error:
                pause = release_pause(attempt)
                log.warning(
                    "channel %s could not be released (try %d, again in %.1f s): %s",
                    shown(channel_id),
                    attempt + 1,
                    pause,
                    error,
                )
                attempt += 1
                await asyncio.sleep(pause)
            else:
                return True

    async def _reconcile(self, epoch: int) -> None:
        """After the `epoch`-th connection: calls from before it whose channels vanished are
        ended; those still waiting for a key may have missed events and fail closed; channels
        in our Stasis app that we do not know (a restart, or a call that arrived while we
        were away) have no committed decision and go on unrecorded. Calls that arrived on
        this connection are left alone."""
        try:
            channels = await self._client.list_channels()
        except AsteriskError as error:
            log.warning("could not list channels to reconcile: %s", error)
            return
        present = {str(c.get("id")): c for c in channels if isinstance(c, Mapping)}
        for channel_id, call in list(self._calls.items()):
            if call.epoch >= epoch:
                continue
            if channel_id not in present:
                call.queue.put_nowait(_Ended(destroyed=True))
            elif call.session is not None and not call.session.decision_committed:
                call.queue.put_nowait(ControlLost("ARI events were interrupted"))
        unknown = [
            channel_id
            for channel_id, channel in present.items()
            if self._unknown(channel_id) and _in_our_stasis(channel, self._client.app)
        ]
        if unknown:
            # Its StasisStart may still be on its way to us: give it a moment.
            await asyncio.sleep(UNKNOWN_CHANNEL_GRACE)
        for channel_id in unknown:
            if self._unknown(channel_id):
                log.warning(
                    "channel %s was in Stasis without a decision; released unrecorded",
                    shown(channel_id),
                )
                await self._release(channel_id)
        await self._adopt_open_calls(present)

    def _unknown(self, channel_id: str) -> bool:
        return channel_id not in self._calls and channel_id not in self._recent

    async def _adopt_open_calls(self, present: Mapping[str, Mapping[str, Any]]) -> None:
        """Calls the ledger holds open that no worker tracks (the controller restarted):
        those whose channel is gone are finished now, so their recording is ingested and a
        missed call becomes findable; those still up are watched again until they end."""
        try:
            open_calls = await self._deps.ledger.open_calls()
        except StorageError as error:
            log.warning("could not list open calls to reconcile: %s", error)
            return
        tracked = {c.session.call_id for c in self._calls.values() if c.session is not None}
        for row in open_calls:
            if row.call_id in tracked or not self._unknown(row.channel_id):
                continue
            if row.channel_id in present and row.decided_at is not None:
                await self._watch(row)
            elif row.channel_id not in present:
                try:  # its file may be in the store already (its end was not stored)
                    stored = await self._deps.ledger.has_stored_audio(row.call_id)
                except StorageError as error:
                    log.warning("call %s: could not read its recording: %s", row.call_id, error)
                    stored = False
                outcome = await asyncio.to_thread(_outcome_after_restart, row, stored=stored)
                log.warning(
                    "call %s ended while the controller was away; finished as %s",
                    row.call_id,
                    outcome.value,
                )
                await finish_call(row.call_id, outcome, self._deps, file=row.recording_file)

    async def _watch(self, row: CallRow) -> None:
        call = _Call(row.channel_id, timer_scale=self._timer_scale)
        call.observer.continued = True
        try:
            await self._client.subscribe(row.channel_id)
        except AsteriskError as error:
            log.warning("call %s could not be watched again: %s", row.call_id, error)
            return
        self._calls[row.channel_id] = call
        self.idle.clear()

        async def wait_for_the_end() -> None:
            try:
                while not isinstance(item := await call.queue.get(), _Ended) or not (
                    item.destroyed
                ):
                    pass
                await finish_call(
                    row.call_id,
                    call.observer.outcome(),
                    self._deps,
                    agent=call.observer.agent(row.direction),
                    file=row.recording_file,
                )
            finally:
                self._forget(call)

        call.worker = asyncio.get_running_loop().create_task(wait_for_the_end())

    def _forget(self, call: _Call) -> None:
        call.cancel_timer()
        for task in list(call.tasks):
            task.cancel()
        self._calls.pop(call.channel_id, None)
        if not self._calls:
            self.idle.set()

    async def shutdown(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop taking calls; undecided calls fail closed (unrecorded, still to an agent);
        calls that continued are finished by their events until the grace runs out."""
        self._accepting = False
        for call in list(self._calls.values()):
            if call.session is not None and not call.session.decision_committed:
                call.queue.put_nowait(ControlLost("the controller is shutting down"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle.wait(), grace)
        for call in list(self._calls.values()):
            if call.worker is not None:
                call.worker.cancel()
        await self._unsubscribe_all(grace)

    async def _unsubscribe_all(self, within: float) -> None:
        """End every channel subscription of the application before its WebSocket closes.
        Asterisk destroys an application whose socket went only if it holds no subscription
        then, and looks again only when some application registers or a channel leaves
        Stasis: one left holding subscriptions (callers still queued; a channel that died
        while our subscription was on its way) stays listed with nobody behind it, and
        whoever checks the name finds it taken. A restarted controller subscribes again to
        the calls it still tracks (`_adopt_open_calls`)."""
        try:
            async with asyncio.timeout(within):
                channel_ids = await self._client.subscribed_channels()
                await asyncio.gather(*(self._client.unsubscribe(c) for c in channel_ids))
        except (AsteriskError, TimeoutError) as error:
            log.warning("channel subscriptions not all ended at shutdown: %s", error or "timeout")


def _playback_state(event: AriEvent) -> str | None:
    playback = event.raw.get("playback")
    if isinstance(playback, Mapping):
        state = playback.get("state")
        return state if isinstance(state, str) else None
    return None


def _outcome_after_restart(row: CallRow, *, stored: bool) -> Outcome:
    """`stored`: the store took the call's recording with audio already."""
    recorded = stored or (row.recording_file is not None and has_audio(row.recording_file))
    return outcome_after_restart(decided=row.decided_at is not None, recorded_audio=recorded)


def _in_our_stasis(channel: Mapping[str, Any], app: str) -> bool:
    dialplan = channel.get("dialplan")
    if not isinstance(dialplan, Mapping):
        return False
    data = str(dialplan.get("app_data", ""))
    return dialplan.get("app_name") == "Stasis" and data.split(",")[0] == app
