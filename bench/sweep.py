"""Benchmark 3: the retention sweep of expired recordings, real files on a real store.

The store's `sweep` removes each recording's file durably and commits its deletion with an
audit entry (hash-chained, fsync'd). The baseline is what an operator would otherwise run
from cron, `find <dir> -type f -mtime +N -delete`, on an identical tree in the same run;
and, since `find` makes nothing durable, `find ... -delete` followed by `sync`.

The sweep runs in a child process (`python -m bench.sweep DIR NOW`), so that its peak
resident memory is its own: measured at two sizes, it shows whether memory grows with the
number of recordings.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
import wave
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.figures import Result, Row, count, ratio, secs, size
from bench.ledger_fill import fill_expired_recordings
from bench.pg_driver import database, reachable, server_url
from bench.processes import child_env
from bench.progress import say
from bench.sizes import Sizes
from flows.errors import CallrecError
from flows.policy import Policy
from storage.factory import open_ledger
from storage.files import UNLINK_WORKERS
from storage.ledgers import LedgerConfig, redact
from storage.sqlite import RECORDINGS_DIR

NOW = datetime(2025, 6, 2, 3, 0, tzinfo=UTC)  # the sweep's "now": every recording is due
AGE_DAYS = 217  # the files' mtime, as old as the recordings (7 months)
FIND_DAYS = 180  # find -mtime +180: "older than 6 months" in find's whole days
TARGET_RATIO = 1.5  # sweep wall time at most this many times find's (issue 8)
RSS_SAMPLE_SECONDS = 0.002  # how often the sweep child reads its resident set
SETTLE_TIMEOUT = 30.0  # seconds to wait for the kernel's write-back before a timing
SETTLED_KIB = 4096  # dirty memory left that counts as settled (other work writes too)
CHILD_TIMEOUT = 3600.0  # seconds a sweep of the full size may take before it is abandoned


def small_recording() -> bytes:
    """A quarter of a second of 8 kHz 16-bit mono audio: a real WAV, small on disk."""
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(8000)
        writer.writeframes(bytes((i * 37) % 251 for i in range(4000)))
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class SweepRun:
    recordings: int
    sweep_seconds: float
    find_seconds: float
    sync_seconds: float
    rss_open_kib: int  # the child's resident memory with the store open, before the sweep
    rss_peak_kib: int  # ... and the most it reached during the sweep
    dirty_kib: int = 0  # write-back pending (Dirty + Writeback) before the sweep's settle
    settle_seconds: float = 0.0  # how long that took to drain
    load: float = 0.0  # the one-minute load average as the sweep began

    @property
    def ratio(self) -> float:
        """The sweep's wall time over find's."""
        return self.sweep_seconds / self.find_seconds

    @property
    def growth_kib(self) -> int:
        """How much the sweep grew the child's resident set over the open store."""
        return max(self.rss_peak_kib - self.rss_open_kib, 0)


def _write_tree(root: Path, relative: list[str], audio: bytes, mtime: float) -> None:
    made: set[Path] = set()
    for rel in relative:
        path = root / rel
        if path.parent not in made:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            made.add(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, audio)
        finally:
            os.close(fd)
        os.utime(path, (mtime, mtime))


def _files_under(root: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(root))


async def _one(base: Path, recordings: int, ledger: LedgerConfig | None = None) -> SweepRun:
    policy = Policy()
    data_dir, tree = base / "store", base / "find-tree"
    audio = small_recording()
    store = await open_ledger(data_dir, policy, ledger, create=True)
    await store.close()
    on = "" if ledger is None else " (PostgreSQL)"
    say(f"sweep{on}: {count(recordings)} expired recordings into a store and a twin tree")
    filled = await asyncio.to_thread(
        fill_expired_recordings, data_dir, policy, recordings, NOW, audio, ledger=ledger
    )
    mtime = time.time() - AGE_DAYS * 86_400
    await asyncio.to_thread(_write_tree, data_dir, filled.recording_paths, audio, mtime)
    await asyncio.to_thread(_write_tree, tree, filled.recording_paths, audio, mtime)
    store = await open_ledger(data_dir, policy, ledger)
    try:
        checked = await store.verify()
    finally:
        await store.close()
    if not checked.ok:
        raise CallrecError(f"the filled store does not verify: {checked.problems[0]}")

    dirty_kib, settle_seconds = await asyncio.to_thread(settle)
    load = os.getloadavg()[0]
    say(f"sweep{on}: store.sweep of {count(recordings)} recordings (child process)")
    report = await asyncio.to_thread(_sweep_in_child, data_dir, base / "sweep-child.log", ledger)
    if report["deleted"] != recordings or report["problems"]:
        raise CallrecError(
            f"the sweep deleted {report['deleted']} of {recordings} ({report['problems'][:1]})"
        )
    left = _files_under(data_dir / RECORDINGS_DIR)
    if left:
        raise CallrecError(f"{left} files left in the store after the sweep")

    await asyncio.to_thread(settle)
    say(f"sweep{on}: find -delete of {count(recordings)} files")
    began = time.perf_counter()
    subprocess.run(
        ["find", str(tree), "-type", "f", "-mtime", f"+{FIND_DAYS}", "-delete"],
        check=True,
        timeout=CHILD_TIMEOUT,
    )
    find_seconds = time.perf_counter() - began
    began = time.perf_counter()
    os.sync()
    sync_seconds = time.perf_counter() - began
    left = _files_under(tree)
    if left:
        raise CallrecError(f"find left {left} files")
    return SweepRun(
        recordings,
        float(report["seconds"]),
        find_seconds,
        sync_seconds,
        int(report["rss_open_kib"]),
        int(report["rss_peak_kib"]),
        dirty_kib,
        settle_seconds,
        load,
    )


def _median_run(runs: list[SweepRun]) -> SweepRun:
    """The run whose sweep/find ratio is the median (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: r.ratio)
    return ordered[(len(ordered) - 1) // 2]


async def run(sizes: Sizes, work: Path) -> Result:
    # Each size runs several times on new trees: the same deletions on the same machine
    # varied by a quarter from run to run (find's as much as the sweep's), so one pair of
    # timings can meet a target that the next one misses.
    repeats: dict[int, list[SweepRun]] = {}
    if "sqlite" in sizes.ledgers:
        repeats = {
            n: [await _one(work / f"sweep-{n}-{k}", n) for k in range(sizes.sweep_repeats)]
            for n in sizes.sweep_recordings
        }
    pg_repeats, why_not = await _on_postgresql(sizes, work)
    if not repeats:  # PostgreSQL only: its runs stand for the memory rows too
        repeats, pg_repeats = pg_repeats, {}
        if not repeats:
            raise CallrecError(f"the sweep ran on no ledger: {why_not}")
    runs = [_median_run(each) for each in repeats.values()]
    result = Result(
        "sweep",
        f"Retention sweep: {' and '.join(count(r.recordings) for r in runs)} expired recordings",
    )
    result.setup += [
        f"each run: a store with that many recordings 7 months old (real {len(small_recording())}"
        "-byte WAV files in recordings/YYYY/MM/DD/, ledger rows and audit chain that "
        "`verify` accepts) and an identical tree for find",
        "store.sweep(now) runs in a child process; its wall time excludes opening the store",
        f"the sweep removes files on {UNLINK_WORKERS} threads (storage.files.UNLINK_WORKERS); "
        "find removes them one at a time",
        f"each size runs {sizes.sweep_repeats} time(s) on new trees; the rows show the run "
        "whose ratio to find is the median, and the range of the ratio over all runs",
    ]
    for r in runs:
        n = count(r.recordings)
        result.add(
            Row(
                f"sweep {n}: wall time",
                secs(r.sweep_seconds),
                secs(r.find_seconds),
                ratio(r.sweep_seconds, r.find_seconds),
                f"<= {TARGET_RATIO}x find -delete",
                r.ratio <= TARGET_RATIO,
            )
        )
        ratios = sorted(each.ratio for each in repeats[r.recordings])
        if len(ratios) > 1:
            result.add(
                Row(
                    f"sweep {n}: ratio over {len(ratios)} runs",
                    f"{ratios[0]:.2f}x-{ratios[-1]:.2f}x",
                )
            )
        with_sync = r.find_seconds + r.sync_seconds
        result.add(
            Row(
                f"sweep {n}: vs find -delete; sync",
                secs(r.sweep_seconds),
                secs(with_sync),
                ratio(r.sweep_seconds, with_sync),
            )
        )
        result.add(
            Row(
                f"sweep {n}: before it, write-back drained; load average",
                f"{size(r.dirty_kib * 1024)} in {r.settle_seconds:.1f} s; {r.load:.1f}",
            )
        )
        result.add(
            Row(
                f"sweep {n}: deletions per second",
                f"{r.recordings / r.sweep_seconds:,.0f}/s",
                f"{r.recordings / r.find_seconds:,.0f}/s",
            )
        )

    for recordings, each in pg_repeats.items():
        r = _median_run(each)
        n = count(recordings)
        ratios = sorted(run.ratio for run in each)
        result.add(
            Row(
                f"PostgreSQL sweep {n}: wall time",
                secs(r.sweep_seconds),
                secs(r.find_seconds),
                ratio(r.sweep_seconds, r.find_seconds),
                f"<= {TARGET_RATIO}x find -delete",
                r.ratio <= TARGET_RATIO,
            )
        )
        if len(ratios) > 1:
            result.add(
                Row(
                    f"PostgreSQL sweep {n}: ratio over {len(ratios)} runs",
                    f"{ratios[0]:.2f}x-{ratios[-1]:.2f}x",
                )
            )
    if why_not:
        result.notes.append(why_not)

    # Memory, judged against the sweep: the large size's run that grew most against the
    # small size's run that grew least, so that no lucky run hides a growth.
    small = min(repeats[sizes.sweep_recordings[0]], key=lambda r: r.growth_kib)
    large = max(repeats[sizes.sweep_recordings[-1]], key=lambda r: r.growth_kib)
    for r in (small, large):
        result.add(Row(f"sweep {count(r.recordings)}: peak RSS", size(r.rss_peak_kib * 1024)))
    grew_small, grew_large = small.growth_kib, large.growth_kib
    # Flat: the large run's growth over an open store is within 20 % (and 1 MiB) of the
    # small run's although it deletes several times as many recordings.
    flat = grew_large <= 1.2 * grew_small + 1024
    result.add(
        Row(
            "peak RSS growth over the open store",
            f"{size(grew_large * 1024)} at {count(large.recordings)}",
            f"{size(grew_small * 1024)} at {count(small.recordings)}",
            ratio(grew_large, grew_small) if grew_small else "n/a",
            "does not grow with N",
            flat,
        )
    )
    result.notes += [
        "baseline: find <tree> -type f -mtime +180 -delete on the identical tree, right after; "
        "find makes nothing durable, the sweep fsyncs every directory change and commits an "
        "audit entry per deletion (SQLite synchronous=FULL), hence the second baseline with sync",
        "peak RSS: the sweep process's resident set (/proc/<pid>/statm, read by this process) "
        "with the store open, and the most it reached during the sweep, sampled every "
        f"{RSS_SAMPLE_SECONDS * 1000:g} ms",
    ]
    return result


async def _on_postgresql(sizes: Sizes, work: Path) -> tuple[dict[int, list[SweepRun]], str]:
    """The same runs with the ledger on PostgreSQL (a new database each); or why not."""
    if "postgresql" not in sizes.ledgers:
        return {}, ""
    url = server_url()
    why = reachable(url)
    if why is not None:
        return {}, f"PostgreSQL not run: none at {redact(url)} ({why})"
    runs: dict[int, list[SweepRun]] = {}
    for n in sizes.sweep_recordings:
        for k in range(sizes.sweep_repeats):
            async with database(url) as db:
                one = await _one(work / f"sweep-pg-{n}-{k}", n, LedgerConfig(url=db))
            runs.setdefault(n, []).append(one)
    return runs, ""


def settle() -> tuple[int, float]:
    """Write back what earlier work left dirty, and wait until the kernel has, so that
    neither timing pays for another's write-back (in a whole `make bench` run, the
    benchmarks before this one leave gigabytes behind). (KiB pending first, seconds.)"""
    began = time.monotonic()
    pending = _dirty_kib()
    os.sync()
    deadline = began + SETTLE_TIMEOUT
    while time.monotonic() < deadline and _dirty_kib() > SETTLED_KIB:
        time.sleep(0.1)
    return pending, time.monotonic() - began


def _dirty_kib() -> int:
    """Dirty and under-writeback memory now, in KiB (/proc/meminfo)."""
    total = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("Dirty", "Writeback"):
                total += int(rest.split()[0])
    return total


def _rss_kib(pid: int | str = "self") -> int:
    """A process's resident set now (not its peak so far: opening the ledger may touch more
    pages than the sweep ever holds, and ru_maxrss would hide the sweep under that)."""
    resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024


def _sweep_in_child(data_dir: Path, log: Path, ledger: LedgerConfig | None) -> dict[str, Any]:
    """Run the sweep in a child (`python -m bench.sweep`); its report, with the most resident
    memory it had while sweeping. That is sampled from here, through /proc: a sampler thread
    inside the child would wake 500 times a second and take the interpreter lock from the
    very threads being timed. The child says when its store is open ("open <KiB>") and when
    the sweep is over (its report); only the time between is sampled."""
    argv = [sys.executable, "-m", "bench.sweep", str(data_dir), NOW.isoformat()]
    if ledger is not None and ledger.url is not None:
        argv.append(ledger.url)

    def failed() -> CallrecError:
        return CallrecError(f"the sweep child failed: {log.read_text().strip()[-500:]}")

    with log.open("w") as errors:
        child = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=errors, text=True, env=child_env()
        )
    timer = threading.Timer(CHILD_TIMEOUT, child.kill)
    timer.start()
    try:
        assert child.stdout is not None
        opened = child.stdout.readline().split()
        if opened[:1] != ["open"]:
            child.wait()
            raise failed()
        rss_open = int(opened[1])
        peak = [rss_open]
        over = threading.Event()

        def sample() -> None:
            while not over.wait(RSS_SAMPLE_SECONDS):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    peak[0] = max(peak[0], _rss_kib(child.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            line = child.stdout.readline()
        finally:
            over.set()
            sampler.join()
        if child.wait() != 0 or not line:
            raise failed()
    finally:
        timer.cancel()
    report: dict[str, Any] = json.loads(line)
    return {**report, "rss_open_kib": rss_open, "rss_peak_kib": peak[0]}


async def _sweep_child(data_dir: Path, now: datetime, url: str | None) -> dict[str, object]:
    store = await open_ledger(data_dir, Policy(), None if url is None else LedgerConfig(url=url))
    try:
        print(f"open {_rss_kib()}", flush=True)
        began = time.perf_counter()
        # As `callrec serve` sweeps: the deleted ids announced batch by batch, not kept.
        report = await store.sweep(now, on_deleted=lambda ids: None)
        seconds = time.perf_counter() - began
    finally:
        await store.close()
    return {"seconds": seconds, "deleted": report.count, "problems": list(report.problems)}


if __name__ == "__main__":
    url = sys.argv[3] if len(sys.argv) > 3 else None
    print(
        json.dumps(
            asyncio.run(_sweep_child(Path(sys.argv[1]), datetime.fromisoformat(sys.argv[2]), url))
        ),
        flush=True,
    )
