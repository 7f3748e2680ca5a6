"""One call, driven: a flow's commands carried out against a channel and the ledger.

Both adapters (ARI in `agi/stasis.py`, FastAGI in `agi/fastagi.py`) create a `CallSession`
per call and feed it events; neither holds policy of its own. The session:

* runs the flow's commands in order; a command that answers at once (FastAGI's
  `STREAM FILE` returns the key) yields events that are fed back after the batch;
* answers the flow's data questions itself: `CommitDecision` goes to the ledger (and only
  `DecisionCommitted` lets the flow ask for `StartRecording`), `LookUpPriorCall` asks the
  ledger for the missed call;
* maps `ChannelGone` to `CallerHungUp` and any other Asterisk failure before the decision to
  `ControlLost`, which the flows answer by committing "no decision" and going on unrecorded;
* remembers the file MixMonitor is told to write in the ledger *before* telling Asterisk,
  so that a crash in between leaves a file somebody owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from agi.collector import Ending, RecordingCollector
from agi.ports import ChannelPort, Clock, EventSink
from flows.callbacks import CallbackFlow
from flows.commands import (
    Answer,
    CancelWait,
    Command,
    CommitDecision,
    Continue,
    Hangup,
    LookUpPriorCall,
    NoticeCallee,
    PlayPrompt,
    SkipRecording,
    StartRecording,
    StopPrompt,
    WaitForDigit,
)
from flows.communication import communication_of, look_up_answer
from flows.consent import InboundFlow
from flows.errors import AsteriskError, ChannelGone, ConnectionLost, StorageError
from flows.events import (
    CallerHungUp,
    CommitFailed,
    ControlLost,
    DecisionCommitted,
    Event,
    NoPriorCall,
)
from flows.numbers import caller_id_in_form
from flows.outcome import Outcome
from flows.policy import Decision
from flows.shedding import shed_decision
from storage.ports import (
    CallRow,
    CallStart,
    DecisionRecord,
    Ledger,
    RecordingRow,
    RecordingStore,
)

log = logging.getLogger("callrec.session")

WAV_HEADER_BYTES = 44  # what MixMonitor(...,b) writes when nobody was bridged


def has_audio(file: str) -> bool:
    """Whether MixMonitor's file holds more than its WAV header: it saw a bridge. False when
    the file cannot be read."""
    with contextlib.suppress(OSError):
        return Path(file).stat().st_size > WAV_HEADER_BYTES
    return False


# A channel that would not continue is tried again, for as long as it exists (Asterisk then
# answers 404, or 409 once it has left Stasis): hanging up is never a way to fail closed.
RELEASE_PAUSE = 0.2  # seconds before the second try, doubling
RELEASE_PAUSE_MAX = 5.0  # seconds between tries at most


def release_pause(attempt: int) -> float:
    """Seconds to wait after the `attempt`-th (0-based) failed try to hand a channel on."""
    return min(RELEASE_PAUSE_MAX, RELEASE_PAUSE * float(2 ** min(attempt, 16)))


Flow = InboundFlow | CallbackFlow

LAG_HALF_LIFE = 1.0  # seconds over which a measured decision lag counts half as much
LAG_SMOOTHING = 0.3  # the weight of the latest decision in the recent lag


class DecisionLag:
    """How far behind the controller's decisions run, for `flows.shedding`: the age of the
    oldest decision still waiting for its commit, or else the recent decisions' time from
    being made to being on disk, forgotten as it ages (a quiet spell after a burst must not
    shed the next caller). Wall-clock monotonic time: it measures us, not the calls."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._pending: dict[int, float] = {}  # token -> when its wait began, oldest first
        self._next = 0
        self._recent = 0.0
        self._recent_at = 0.0

    def begin(self) -> int:
        self._next += 1
        self._pending[self._next] = self._clock()
        return self._next

    def end(self, token: int) -> None:
        began = self._pending.pop(token, None)
        if began is None:
            return
        now = self._clock()
        sample = now - began
        self._recent = LAG_SMOOTHING * sample + (1 - LAG_SMOOTHING) * self._decayed(now)
        self._recent_at = now

    def seconds(self) -> float:
        now = self._clock()
        oldest = now - next(iter(self._pending.values())) if self._pending else 0.0
        return max(oldest, self._decayed(now))

    def _decayed(self, now: float) -> float:
        return float(self._recent * 0.5 ** ((now - self._recent_at) / LAG_HALF_LIFE))


@dataclass(frozen=True, slots=True)
class SessionDeps:
    """What every session of one controller shares."""

    ledger: Ledger
    store: RecordingStore
    clock: Clock
    events: EventSink
    spool_dir: Path  # where MixMonitor writes; file names are our call ids, never caller IDs
    prompt_versions: Mapping[str, str]  # prompt id -> sha256 of its audio
    collector: RecordingCollector  # takes each finished file into the store
    recording_format: str = "wav"  # the extension MixMonitor is given: "wav" or "wav16"
    lag: DecisionLag = field(default_factory=DecisionLag)  # measured for shedding
    # How a callback's caller ID is written for the trunk (`[asterisk] caller_id_form`), and
    # the country whose numbers have a national form.
    caller_id_form: str = "national"
    country_code: str = "386"


class CallSession:
    def __init__(self, start: CallStart, flow: Flow, channel: ChannelPort, deps: SessionDeps):
        self.start = start
        self.flow = flow
        self.channel = channel
        self.deps = deps
        self.call_id = start.call_id
        self.recording_file: str | None = None  # set when StartRecording was carried out
        self.continued = False
        self.decision_committed = False
        self.ended = False
        self._in_ledger: asyncio.Task[bool] | None = None
        self._file_registered = False  # the ledger names the recording file already
        self._file: str | None = None  # the spool file's name, once asked for

    @property
    def decision(self) -> Decision:
        return self.flow.decision

    async def begin(self, first: Event) -> None:
        """Record the call in the ledger while the flow answers and plays: the notice does
        not wait for a disk. The decision does: a call the ledger did not take can have none
        committed (CommitFailed), so it goes on to an agent, unrecorded."""
        self._in_ledger = asyncio.get_running_loop().create_task(self._record_start())
        await self.feed(first)

    async def _record_start(self) -> bool:
        try:
            # Lazy: the decision or the end waits for it, not the caller.
            await self.deps.ledger.start_call(self.start, lazy=True)
        except StorageError as error:
            log.error(
                "call %s: ledger refused the call (%s); going on unrecorded", self.call_id, error
            )
            return False
        return True

    def _start_refused(self) -> bool:
        started = self._in_ledger
        if started is None:
            return True
        if not started.done():
            return False
        return started.cancelled() or started.exception() is not None or not started.result()

    def _start_stored(self) -> bool:
        started = self._in_ledger
        return started is not None and started.done() and not self._start_refused()

    async def in_ledger(self) -> bool:
        """Whether the ledger holds the call (waiting for its start to be recorded)."""
        if self.decision_committed:
            return True  # its start went with the decision
        if self._in_ledger is None:
            return False
        # Shielded: a cancelled caller must not cancel the write others wait for.
        return await asyncio.shield(self._in_ledger)

    async def feed(self, event: Event) -> None:
        pending: deque[Event] = deque([event])
        lost = isinstance(event, ControlLost)
        while pending:
            current = pending.popleft()
            commands = self.flow.handle(current, self.deps.clock.now())
            broken = False
            for command in commands:
                # Once the channel is gone or cannot be driven, the rest of this batch's
                # channel commands would only fail or mislead (a prompt after a failed
                # answer); the ledger's answers still go back to the flow.
                if broken and not isinstance(command, CommitDecision | LookUpPriorCall):
                    continue
                produced = await self._execute(command)
                broken = broken or any(isinstance(e, ControlLost | CallerHungUp) for e in produced)
                lost = lost or any(isinstance(e, ControlLost) for e in produced)
                pending.extend(produced)
        if lost and not self.continued:
            await self._release_unrecorded()

    async def _execute(self, command: Command) -> list[Event]:
        match command:
            case CommitDecision():
                return [await self._commit(command)]
            case LookUpPriorCall():
                return [await self._look_up(command)]
        try:
            return await self._on_channel(command)
        except ChannelGone:
            return [CallerHungUp()]
        except AsteriskError as error:
            log.warning("call %s: %s failed: %s", self.call_id, type(command).__name__, error)
            if isinstance(command, StopPrompt | CancelWait):
                return []  # the decision stands; a prompt that would not stop is harmless
            if isinstance(command, StartRecording):
                return await self._recording_failed(error)
            if isinstance(command, Continue):
                return await self._continue_failed()
            return [ControlLost(f"{type(command).__name__}: {error}")]

    async def _on_channel(self, command: Command) -> list[Event]:
        channel = self.channel
        match command:
            case Answer():
                return await channel.answer()
            case PlayPrompt(prompt=prompt, barge_in=barge_in, token=token):
                return await channel.play(prompt, barge_in=barge_in, token=token)
            case StopPrompt(token=token):
                return await channel.stop_prompt(token)
            case WaitForDigit(timeout=timeout, token=token):
                return await channel.wait_for_digit(timeout, token)
            case CancelWait(token=token):
                return await channel.cancel_wait(token)
            case StartRecording():
                return await self._start_recording()
            case SkipRecording(reason=reason):
                self.deps.events.publish(
                    "recording/skipped", {"call_id": self.call_id, "reason": reason}
                )
                return await channel.skip_recording(self.call_id)
            case NoticeCallee(line=line):
                return await channel.notice_callee(self.call_id, line)
            case Continue():
                if isinstance(self.flow, CallbackFlow):
                    await self._show_caller_id()
                events = await channel.continue_in_dialplan()
                self.continued = True
                return events
            case Hangup():
                return await channel.hangup()
        raise AssertionError(f"unhandled command {command!r}")  # the match is exhaustive

    async def _show_caller_id(self) -> None:
        """A callback shows its line's caller ID. Failing to say so costs nothing but the
        number shown: the dialplan then shows CALLREC_CALLBACK_NUMBER."""
        line = self.flow.line
        number = caller_id_in_form(
            line.callback_caller_id or line.numbers[0],
            self.deps.caller_id_form,
            country_code=self.deps.country_code,
        )
        try:
            await self.channel.show_caller_id(number)
        except ChannelGone:
            raise
        except AsteriskError as error:
            log.warning("call %s: callback caller ID not set: %s", self.call_id, error)

    async def _commit(self, command: CommitDecision) -> Event:
        # A decision to record names its file in the same commit (owned before it exists),
        # so that StartRecording needs no second one.
        file = self._spool_file() if command.decision is Decision.RECORD else None
        record = DecisionRecord(
            call_id=self.call_id,
            recording_file=file,
            decision=command.decision,
            legal_basis=command.legal_basis,
            digit=command.digit,
            reason=command.reason,
            prompt=command.prompt,
            prompt_sha256=self.deps.prompt_versions.get(command.prompt or ""),
            decided_at=command.decided_at,
            keep=command.keep,
            linked_to=command.linked_to,
            window=command.window,
            overload=command.overload,
            communication_id=None
            if command.linked_to is None
            else communication_of(self.call_id, command.linked_to, self.start.communication_id),
        )
        waiting = self.deps.lag.begin()
        try:
            if self._start_refused():
                return CommitFailed("the ledger did not take the call")
            # The start goes with the decision while it is still on its way (not waited
            # for: the ledger writes it first in the decision's transaction); one already
            # committed, as under load it is, costs the decision nothing.
            carried = None if self._start_stored() else self.start
            await self.deps.ledger.commit_decision(record, carried)
        except StorageError as error:
            log.error("call %s: decision not committed: %s", self.call_id, error)
            return CommitFailed(str(error))
        finally:
            self.deps.lag.end(waiting)
        self.decision_committed = True
        self._file_registered = file is not None
        self.deps.events.publish(
            "decision",
            {
                "call_id": self.call_id,
                "line": command.keep.line,
                "direction": self.start.direction.value,
                "decision": command.decision.value,
                "legal_basis": command.legal_basis.value,
                "linked_to": command.linked_to,
                "at": command.decided_at.isoformat(),
            },
        )
        return DecisionCommitted()

    async def _look_up(self, command: LookUpPriorCall) -> Event:
        customer = self.start.customer
        if customer is None:
            return NoPriorCall()
        try:
            found = await self.deps.ledger.callback_candidates(
                customer, command.since, command.legal_basis
            )
        except StorageError as error:
            # Without the ledger nothing can be linked: treat as a new communication, in which
            # the customer hears the notice; the commit that follows will fail closed anyway.
            log.error("call %s: callback lookup failed: %s", self.call_id, error)
            return NoPriorCall()
        return look_up_answer(
            command.legal_basis, command.since, customer, found.calls, found.withdrawals
        )

    def _spool_file(self) -> str:
        if self._file is None:
            self._file = str(self.deps.spool_dir / f"{self.call_id}.{self.deps.recording_format}")
        return self._file

    async def _start_recording(self) -> list[Event]:
        file = self._spool_file()
        # Owned before it exists: a crash after this line leaves a file reconcile can place.
        try:
            if not self._file_registered:
                await self.deps.ledger.set_recording_file(self.call_id, file)
        except StorageError as error:
            # A file nobody would own must not be written: go on unrecorded.
            log.error(
                "call %s: recording file not registered (%s); not recording", self.call_id, error
            )
            await self.channel.skip_recording(self.call_id)
            return []
        events = await self.channel.start_recording(self.call_id, file)
        self.recording_file = file
        self.deps.events.publish("recording/started", {"call_id": self.call_id})
        return events

    async def _recording_failed(self, error: AsteriskError) -> list[Event]:
        self.recording_file = None
        await self._mark_unrecorded(f"recording could not be started: {error}")
        try:
            await self.channel.skip_recording(self.call_id)
        except AsteriskError:
            log.warning("call %s: could not clear CALLREC_RECORD after %s", self.call_id, error)
        return []

    async def _mark_unrecorded(self, reason: str) -> None:
        """A committed "record" that will not be carried out says so in the ledger, so that
        no such decision is left without an outcome."""
        if not self.decision_committed or self.decision is not Decision.RECORD:
            return
        try:
            await self.deps.ledger.mark_unrecorded(self.call_id, reason, self.deps.clock.now())
        except StorageError as error:
            log.error("call %s: not marked unrecorded: %s", self.call_id, error)

    async def _continue_failed(self) -> list[Event]:
        # The decision's variables are set; only the hand-over is missing. Whether the
        # recording happens is the dialplan's to decide from them, as on the first try.
        await self._hand_on(skip=False)
        return []

    async def _release_unrecorded(self) -> None:
        """The caller goes on to an agent, and nothing records."""
        await self._mark_unrecorded("control of the channel was lost before the recording")
        await self._hand_on(skip=True)

    async def _hand_on(self, *, skip: bool) -> None:
        """`continue` until it goes through: a channel left in Stasis holds its caller in
        silence, and hanging up would drop a caller for a failure of ours. Tried for as long
        as the channel is in Stasis (a 404 or a 409 ends it). Clearing CALLREC_RECORD is
        best effort: it is only ever "yes" after a committed decision to record."""
        attempt = 0
        while True:
            try:
                if skip:
                    with contextlib.suppress(AsteriskError):
                        await self.channel.skip_recording(self.call_id)
                    skip = False
                await self.channel.continue_in_dialplan()
            except (ChannelGone, ConnectionLost):
                return  # gone, or out of reach: its dialplan goes on without a yes
            except AsteriskError as error:
                pause = release_pause(attempt)
                log.warning(
                    "call %s: continue failed (try %d, again in %.1f s): %s",
                    self.call_id,
                    attempt + 1,
                    pause,
                    error,
                )
                attempt += 1
                await asyncio.sleep(pause)
            else:
                self.continued = True
                return

    async def shed(self, reason: str) -> None:
        """The channel was handed on unrecorded before any prompt (the controller is behind):
        the ledger gets the call with its decision "none" and why, if it takes them."""
        self.continued = True
        self._in_ledger = asyncio.get_running_loop().create_task(self._record_start())
        now = self.deps.clock.now()
        await self._commit(shed_decision(self.flow.line, reason, now, tz=self.flow.timezone))

    async def hung_up(self) -> None:
        await self.feed(CallerHungUp())


async def finish_call(
    call_id: str,
    outcome: Outcome,
    deps: SessionDeps,
    *,
    wait: bool = True,
    agent: str | None = None,
    file: str | None = None,
) -> RecordingRow | None:
    """The channel is gone: store the outcome (a MISSED call can now be called back) and have
    the collector move the MixMonitor file into the store once MixMonitor has finished it.
    With `wait`, that is awaited (bounded); without, it happens in the background (the
    FastAGI hangup handler must end before MixMonitor can close the file). Works from the
    ledger alone, so the FastAGI hangup route (a separate connection) and a restarted
    controller can call it.

    `file`: the recording file the call was given, when it is known. The file is then
    collected without waiting for the end's commit, and the end waits (`lazy`, briefly) to
    share the commit of the file's ingest: one transaction a call instead of two."""
    ending = asyncio.get_running_loop().create_task(
        _store_end(call_id, deps.clock.now(), outcome, deps, agent, lazy=file is not None)
    )
    target: CallRow | Ending
    # Shielded: a cancelled caller (a shutdown) must not take the end with it.
    if file is None:
        row = await asyncio.shield(ending)
        if row is None:
            return None
        target = row
    else:
        target = Ending(file, ending)
    if not wait:
        deps.collector.collect_soon(call_id, target)
        return None
    recording = await deps.collector.collect(call_id, target)
    await asyncio.shield(ending)
    return recording


async def _store_end(
    call_id: str,
    ended_at: datetime,
    outcome: Outcome,
    deps: SessionDeps,
    agent: str | None,
    *,
    lazy: bool,
) -> CallRow | None:
    try:
        return await deps.ledger.end_call(call_id, ended_at, outcome, agent, lazy=lazy)
    except StorageError as error:
        # The call stays open: the collector's check closes it once no call could last
        # that long, and collects a file still in the spool then.
        log.error("call %s: outcome %s not stored: %s", call_id, outcome.value, error)
        return None
