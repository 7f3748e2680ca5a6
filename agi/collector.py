"""Finished MixMonitor files into the store, in both modes, until each one is stored.

A call's end (ARI's `ChannelDestroyed`, FastAGI's `/hangup` report) says the channel is
gone, not that its recording is finished: MixMonitor flushes its last frames and writes the
WAV header when it closes the file (`agi.spool`). The collector therefore waits for that
close, for at most `close_wait` seconds, and only then asks the store to ingest the file.
A file not closed in time, or an ingest that fails (a full disk, a locked ledger), stays in
the spool and is tried again with a growing pause, by the running controller, not only at
its next start.

It also keeps the promise that nothing stays open for ever: a call whose end is never
reported (a hangup handler that did not run, a lost connection) is closed once it has been
open for longer than any call lasts (`longest_call`), and its file collected like any other.
Files in the spool that no call owns are left to the store's reconcile at start, which
deletes them (audited).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from agi.ports import Clock, EventSink
from agi.spool import SpoolWatch
from flows.errors import CallrecError, StorageError
from flows.outcome import unrecorded_reason
from storage.ports import CallRow, Ledger, RecordingRow, RecordingStore

log = logging.getLogger("callrec.collector")


@dataclass(frozen=True, slots=True)
class Ending:
    """A call's end on its way to the ledger (a lazy `Ledger.end_call`), with the recording
    file the call was given: the file is collected without waiting for the end, which then
    shares the commit of the file's ingest. `row`: the call as the end stored it, None when
    the end was not stored."""

    file: str
    row: asyncio.Future[CallRow | None]


# MixMonitor closes its file as soon as the channel's hooks are gone, within milliseconds; a
# PBX under load, writing to a slow disk, may take seconds. Past this the file is left for
# a retry instead of holding anything up.
CLOSE_WAIT = 30.0
RETRY_FIRST = 5.0  # seconds before a failed collection is tried again, doubled each time
RETRY_MAX = 600.0  # the longest pause between tries: a full disk is tried every 10 minutes
CHECK_EVERY = 30.0  # seconds between looks for calls with no end and files to retry
# The longest plausible call: a call-center conversation lasts minutes, the longest ones an
# hour or two; a working day and a half is beyond any of them, yet short enough that a call
# whose end was lost is stored (and so swept or withdrawn) the same day.
LONGEST_CALL = timedelta(hours=12)
_CALL_FILE = re.compile(r"^([0-9a-f]{32})\.(?:wav|wav16)$")  # storage.recording_format


class RecordingCollector:
    def __init__(
        self,
        ledger: Ledger,
        store: RecordingStore,
        clock: Clock,
        events: EventSink,
        watch: SpoolWatch,
        *,
        longest_call: timedelta = LONGEST_CALL,
        close_wait: float = CLOSE_WAIT,
        retry_first: float = RETRY_FIRST,
        retry_max: float = RETRY_MAX,
        check_every: float = CHECK_EVERY,
    ) -> None:
        self._ledger = ledger
        self._store = store
        self._clock = clock
        self._events = events
        self.watch = watch
        self.longest_call = longest_call
        self._close_wait = close_wait
        self._retry_first = retry_first
        self._retry_max = retry_max
        self._check_every = check_every
        self._busy: dict[str, asyncio.Task[RecordingRow | None]] = {}
        self._retries: dict[str, tuple[int, float]] = {}  # call id -> (failures, next try)
        self._checker: asyncio.Task[None] | None = None

    def start(self, *, check: bool = True) -> None:
        """Watch the spool for closed files; with `check`, also look for calls with no end
        and for files to retry every `check_every` seconds."""
        self.watch.start()
        if check and self._checker is None:
            self._checker = asyncio.get_running_loop().create_task(self._check_forever())

    async def stop(self, grace: float = 5.0) -> None:
        """Stop; collections under way get `grace` seconds to finish. One cut short is safe:
        the store finishes or undoes a half-done ingest, and the file is retried at start."""
        checker, self._checker = self._checker, None
        if self._busy:
            await asyncio.wait(list(self._busy.values()), timeout=grace)
        tasks = list(self._busy.values()) + ([checker] if checker is not None else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._busy.clear()
        self.watch.stop()

    async def __aenter__(self) -> RecordingCollector:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def pending(self, call_id: str) -> bool:
        """Whether the call's file is being collected or waits for a retry."""
        return call_id in self._busy or call_id in self._retries

    def retrying(self) -> dict[str, int]:
        """Call ids waiting for a retry, with the failures so far."""
        return {call_id: failures for call_id, (failures, _) in self._retries.items()}

    async def collect(
        self, call_id: str, call: CallRow | Ending | None = None
    ) -> RecordingRow | None:
        """Wait (bounded) until the call's file is finished, then ingest it. None when there
        is no file, when it was discarded, or when it is left for a retry. `call`: the
        call's row as the ledger just gave it (`Ledger.end_call`), or its end on the way
        with the file it was given (`Ending`), else it is read."""
        return await asyncio.shield(self._task(call_id, call))

    def collect_soon(self, call_id: str, call: CallRow | Ending | None = None) -> None:
        """`collect` in the background: for a caller that must not wait for the file (the
        FastAGI hangup handler, which MixMonitor's close waits for)."""
        self._task(call_id, call)

    async def drain(self) -> None:
        """Wait until no collection runs (retries still scheduled do not count)."""
        while self._busy:
            await asyncio.gather(*list(self._busy.values()), return_exceptions=True)

    def _task(
        self, call_id: str, call: CallRow | Ending | None
    ) -> asyncio.Task[RecordingRow | None]:
        task = self._busy.get(call_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._collect(call_id, call))
            self._busy[call_id] = task
            task.add_done_callback(lambda _: self._busy.pop(call_id, None))
        return task

    async def _collect(self, call_id: str, call: CallRow | Ending | None) -> RecordingRow | None:
        row = None
        if isinstance(call, Ending):
            source = Path(call.file)
        else:
            try:
                row = call if call is not None else await self._ledger.get_call(call_id)
            except StorageError as error:
                log.error("call %s: cannot read its recording file (%s); retrying", call_id, error)
                self._failed(call_id)
                return None
            if row is None or row.recording_file is None:
                self._retries.pop(call_id, None)
                return None
            source = Path(row.recording_file)
        # A stat in the local spool, here: a worker thread would cost more than it does
        # (the ingest checks the file the same way).
        if not source.exists():
            # MixMonitor creates its file as its thread starts (app_mixmonitor.c,
            # mixmonitor_thread), long before the channel ends; none now means it never
            # ran (the caller left before the queue, or the dialplan refused), or the file
            # was collected already (the ledger then holds its recording and skips the
            # mark). A decision to record with no recording says why, once.
            self._retries.pop(call_id, None)
            if isinstance(call, Ending):
                row = await call.row  # None: the end was not stored; the check closes it
            if row is not None:
                reason = unrecorded_reason(
                    decision=row.decision, outcome=row.outcome, file_written=False
                )
                if row.ended_at is not None and reason is not None:
                    await self._mark_unrecorded(call_id, reason)
            return None
        if not await self.watch.finished(source, self._close_wait):
            log.warning(
                "call %s: MixMonitor has not closed its file within %g s; left in the spool "
                "and tried again",
                call_id,
                self._close_wait,
            )
            self._failed(call_id)
            return None
        try:
            recording = await self._store.ingest(call_id, source, self._clock.now(), lazy=True)
        except StorageError as error:
            log.error("call %s: recording not ingested, tried again later: %s", call_id, error)
            self._failed(call_id)
            return None
        self._retries.pop(call_id, None)
        if recording is not None:
            self._events.publish(
                "recording/stored",
                {
                    "call_id": call_id,
                    "recording_id": recording.id,
                    "status": recording.status.value,
                    "delete_after": recording.delete_after.isoformat(),
                },
            )
        return recording

    async def _mark_unrecorded(self, call_id: str, reason: str) -> None:
        try:
            marked = await self._ledger.mark_unrecorded(call_id, reason, self._clock.now())
        except StorageError as error:
            log.error("call %s: not marked unrecorded: %s", call_id, error)
            return
        if marked:
            log.info("call %s: no recording file was written: %s", call_id, reason)
            self._events.publish("recording/skipped", {"call_id": call_id, "reason": reason})

    def _failed(self, call_id: str) -> None:
        failures, _ = self._retries.get(call_id, (0, 0.0))
        pause = min(self._retry_first * 2**failures, self._retry_max)
        self._retries[call_id] = (failures + 1, asyncio.get_running_loop().time() + pause)

    async def _check_forever(self) -> None:
        while True:
            try:
                await self.check()
            except CallrecError as error:
                log.error("looking for calls and files to collect failed: %s", error)
            await asyncio.sleep(self._check_every)

    async def check(self) -> None:
        """One round: close calls open for longer than any call, then collect every spool
        file of an ended call whose retry is due."""
        now = self._clock.now()
        for call_id in await self._ledger.close_stale_calls(now - self.longest_call, now):
            log.warning(
                "call %s: no end was reported within %s; closed, its recording collected",
                call_id,
                self.longest_call,
            )
            self._retries.pop(call_id, None)
            self.collect_soon(call_id)
        loop_now = asyncio.get_running_loop().time()
        for name in await asyncio.to_thread(self._spool_names):
            call_id = name.partition(".")[0]
            if call_id in self._busy:
                continue
            retry = self._retries.get(call_id)
            if retry is not None and retry[1] > loop_now:
                continue
            with contextlib.suppress(StorageError):
                row = await self._ledger.get_call(call_id)
                if (
                    row is not None
                    and row.ended_at is not None
                    and row.recording_file is not None
                    and Path(row.recording_file) == self.watch.directory / name
                ):
                    self.collect_soon(call_id, row)

    def _spool_names(self) -> list[str]:
        try:
            names = [path.name for path in self.watch.directory.iterdir()]
        except OSError:
            return []
        return sorted(name for name in names if _CALL_FILE.match(name))
