"""Benchmark 4: ingest of finished 1-minute recordings (8 kHz, 16-bit, mono: 960 kB).

`RecordingStore.ingest` hashes the file, makes it durable in the store (fsync, rename or
copy, directory fsyncs) and commits the recording and its audit entry. Measured with the
spool on the store's file system (MixMonitor's usual layout: a rename) and, where the
machine has one, on tmpfs (another file system: a copy). Baseline on the same files:
`shutil.copyfile` and an `fsync` of the copy, which is the least a durable copy costs.

The files are written just before each run and not synced, like a recording MixMonitor has
just closed: each side pays for writing the audio to disk once.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import tempfile
import time
import wave
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.figures import Result, Row, ms, percentile, ratio, size
from bench.machine import filesystem
from bench.progress import say
from bench.sizes import Sizes
from flows.errors import CallrecError
from flows.outcome import Outcome
from flows.policy import Decision, Direction, LegalBasis, Policy
from storage.ports import CallStart, DecisionRecord, RecordingStatus
from storage.sqlite import SqliteStore

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
SECONDS = 60
RATE = 8000
TMPFS = Path("/dev/shm")  # a second file system on most Linux machines


def one_minute(seed: bytes) -> bytes:
    """A real WAV: one minute of 8 kHz 16-bit mono noise (content unique per seed)."""
    frames = (seed * (SECONDS * RATE * 2 // len(seed) + 1))[: SECONDS * RATE * 2]
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(RATE)
        writer.writeframes(frames)
    return out.getvalue()


def _write_all(paths: list[Path], audio: list[bytes]) -> None:
    for path, data in zip(paths, audio, strict=True):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


@dataclass(frozen=True, slots=True)
class Timed:
    seconds: list[float]  # one per recording

    @property
    def total(self) -> float:
        return sum(self.seconds)


async def _calls(store: SqliteStore, spool: Path, n: int) -> list[tuple[str, Path]]:
    """`n` finished calls with a committed RECORD decision, as the controller leaves them."""
    made = []
    for k in range(n):
        call_id = secrets.token_hex(16)
        started = NOW - timedelta(minutes=2, seconds=k)
        await store.start_call(
            CallStart(
                call_id=call_id,
                channel_id=f"{started.timestamp():.0f}.{k}",
                direction=Direction.INBOUND,
                line="sales",
                caller=f"+3863{k:07d}",
                dialed="+38640404045",
                started_at=started,
            )
        )
        await store.commit_decision(
            DecisionRecord(
                call_id=call_id,
                decision=Decision.RECORD,
                legal_basis=LegalBasis.ZEKOM2_214_7,
                digit=None,
                reason="sales line: notice played",
                prompt="callrec-sales-notice",
                prompt_sha256="0" * 64,
                decided_at=started + timedelta(seconds=15),
            )
        )
        path = spool / f"{call_id}.wav"
        await store.set_recording_file(call_id, str(path))
        await store.end_call(call_id, started + timedelta(seconds=15 + SECONDS), Outcome.ANSWERED)
        made.append((call_id, path))
    return made


async def _ingest(base: Path, spool: Path, audio: list[bytes]) -> Timed:
    store = await SqliteStore.open(base / "store", Policy(), spool_dir=spool, create=True)
    try:
        calls = await _calls(store, spool, len(audio))
        _write_all([path for _, path in calls], audio)
        times = []
        for call_id, path in calls:
            began = time.perf_counter()
            row = await store.ingest(call_id, path, NOW)
            times.append(time.perf_counter() - began)
            if row is None or row.status is not RecordingStatus.STORED or row.size != len(audio[0]):
                raise CallrecError(f"call {call_id} was not stored whole")
    finally:
        await store.close()
    return Timed(times)


def _copy(source_dir: Path, dest_dir: Path, audio: list[bytes]) -> Timed:
    source_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    dest_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    sources = [source_dir / f"{k:06d}.wav" for k in range(len(audio))]
    _write_all(sources, audio)
    times = []
    for source in sources:
        began = time.perf_counter()
        target = dest_dir / source.name
        shutil.copyfile(source, target)
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        times.append(time.perf_counter() - began)
    return Timed(times)


def _other_file_system(need: int, work: Path) -> Path | None:
    """A directory on tmpfs with room for `need` bytes, or None."""
    if not TMPFS.is_dir() or filesystem(TMPFS) != "tmpfs" or filesystem(work) == "tmpfs":
        return None
    if shutil.disk_usage(TMPFS).free < 2 * need:
        return None
    return Path(tempfile.mkdtemp(prefix="callrec-bench-spool-", dir=TMPFS))


async def run(sizes: Sizes, work: Path) -> Result:
    n = sizes.ingest_files
    audio = [one_minute(os.urandom(4096)) for _ in range(n)]
    nbytes = len(audio[0])
    variants: list[tuple[str, Timed, Timed]] = []

    base = work / "ingest-same-fs"
    spool = base / "spool"
    spool.mkdir(parents=True)
    say(f"ingest: {n} recordings, spool on the store's file system")
    ours = await _ingest(base, spool, audio)
    theirs = _copy(base / "copy-src", base / "copy-dst", audio)
    variants.append(("spool on the store's file system (rename)", ours, theirs))
    shutil.rmtree(base)

    other = _other_file_system(n * nbytes, work)
    if other is not None:
        try:
            say(f"ingest: {n} recordings, spool on tmpfs")
            base = work / "ingest-tmpfs"
            ours = await _ingest(base, other, audio)
            theirs = _copy(other / "copy-src", base / "copy-dst", audio)
            variants.append(("spool on tmpfs (copy)", ours, theirs))
        finally:
            shutil.rmtree(other, ignore_errors=True)

    result = Result("ingest", f"Ingest: {n} one-minute recordings ({size(nbytes)} each)")
    result.setup.append(
        "each recording: a finished call with a committed RECORD decision; ingest hashes "
        "(SHA-256), fsyncs, places the file and commits the row and its audit entry"
    )
    for label, ours, theirs in variants:
        result.add(
            Row(
                f"ingest, {label}",
                f"{n / ours.total:,.1f} rec/s",
                f"{n / theirs.total:,.1f} rec/s",
                ratio(ours.total, theirs.total),
            )
        )
        result.add(
            Row(
                "  per recording p50 / p99",
                f"{ms(percentile(ours.seconds, 50))} / {ms(percentile(ours.seconds, 99))}",
                f"{ms(percentile(theirs.seconds, 50))} / {ms(percentile(theirs.seconds, 99))}",
            )
        )
        result.add(
            Row(
                "  throughput",
                f"{size(n * nbytes / ours.total)}/s",
                f"{size(n * nbytes / theirs.total)}/s",
            )
        )
    if other is None:
        result.notes.append("no tmpfs at /dev/shm with room: the copy path was not measured")
    result.notes.append(
        "baseline: shutil.copyfile of the same files (written the same way just before) and "
        "os.fsync of the copy; ratio = our time / the baseline's"
    )
    return result
