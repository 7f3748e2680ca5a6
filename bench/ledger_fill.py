"""Fills a real ledger in bulk, row for row as the store itself would have written it.

Going through the store's API would take hours for ten million calls (each call is three
fsync'd transactions), so the rows are inserted directly with `sqlite3` (or, for a
PostgreSQL ledger, with COPY through psycopg), in the tables the store's own migrations
created (the store is opened first), with the values the store
writes: normalised numbers, `storage.db.ts` timestamps, each line's `flows.retention`
dates and purposes, callbacks as `flows.callbacks` decides them, and an audit log whose
hash chain and
pseudonyms are computed with `storage.audit` and `storage.chain` (keyed under the store's
audit key, as the store writes it: its `verify` accepts it).

Calls are made a batch at a time as columns (numpy arrays of microseconds since the epoch,
lists of texts), and hash-chained into the audit and inserted by a second process, so that
on two cores making the next batch and loading the last one overlap. Both loaders build the
store's indexes (on PostgreSQL also its keys) after the load, from their own definitions.
`tests/test_ledger_fill.py` checks the rows against calls driven through the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import random
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from flows.callbacks import same_communication
from flows.errors import CallrecError
from flows.events import PriorCallFound
from flows.policy import Decision, LegalBasis, Line, LinePolicy, Policy
from flows.retention import delete_after
from storage.audit import GENESIS, canonical, load_key, pseudonym
from storage.chain import entry_mac, load_audit_key
from storage.datadir import default_controller_id
from storage.db import ts
from storage.ledgers import LedgerConfig
from storage.rows import purposes_text
from storage.sqlite import KEY_FILE, LEDGER_FILE, make_recording_id

SECOND = 1_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
NO_TIME = -1  # in a column of times: the value is NULL
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BATCH = 20_000  # calls per batch: large enough to amortise, small enough to stay lean
CACHE_KIB = 1 << 20  # SQLite page cache of the bulk load (1 GiB, freed when it ends)
SPOOL = "/var/spool/asterisk/callrec"  # where MixMonitor wrote (a column, never opened here)
BYTES_PER_SECOND = 16_000  # 8 kHz, 16-bit, mono
WAV_HEADER = 44

Micros = NDArray[np.int64]


def micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def moment(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def texts(us: Micros) -> list[str]:
    """`storage.db.ts` of each time (numpy formats them in C)."""
    iso = np.datetime_as_string(us.astype("datetime64[us]"), unit="us").tolist()
    return [f"{text}Z" for text in iso]


class DueTimes:
    """`flows.retention.delete_after` for columns of times, from one offset per UTC hour.

    Within one UTC hour the local offset is constant (Europe/Ljubljana changes on the hour),
    so the due time is the time plus one offset; in an hour whose two ends disagree (its
    due day is a DST change day) every time is computed exactly."""

    def __init__(self, months: int, tz: str) -> None:
        self._months = months
        self._tz = tz
        self._by_hour: dict[int, int | None] = {}

    def exact(self, us: int) -> int:
        return micros(delete_after(moment(us), months=self._months, tz=self._tz))

    def _offset(self, hour: int) -> int | None:
        if hour not in self._by_hour:
            first, last = hour * HOUR, hour * HOUR + HOUR - 1
            delta = self.exact(first) - first
            self._by_hour[hour] = delta if self.exact(last) - last == delta else None
        return self._by_hour[hour]

    def __call__(self, us: Micros) -> Micros:
        hours, where = np.unique(us // HOUR, return_inverse=True)
        offsets = [self._offset(int(hour)) for hour in hours.tolist()]
        table = np.array([0 if o is None else o for o in offsets], dtype=np.int64)
        due = us + table[where]
        irregular = np.array([o is None for o in offsets], dtype=bool)[where]
        for index in np.flatnonzero(irregular).tolist():
            due[index] = self.exact(int(us[index]))
        return due


@dataclass(slots=True)
class CallColumns:
    """A batch of calls as they end up in the ledger, one column each."""

    call_id: list[str]
    direction: list[str]
    line: list[str]
    caller: list[str | None]
    dialed: list[str | None]
    customer: list[str | None]
    started: Micros
    ended: Micros
    outcome: list[str]
    decision: list[str]
    decided: Micros  # NO_TIME: no decision was committed
    digit: list[str | None]
    basis: list[str | None]
    prompt: list[str | None]
    reason: list[str | None]
    linked_to: list[str | None]  # a callback: the missed call it answers
    recording_id: list[str | None]  # set: the call was recorded and its file stored
    ingested: Micros  # when the recording was stored

    def __len__(self) -> int:
        return len(self.call_id)

    def head(self, n: int) -> CallColumns:
        return CallColumns(*(getattr(self, f.name)[:n] for f in fields(self)))

    @staticmethod
    def join(first: CallColumns, second: CallColumns) -> CallColumns:
        parts: list[Any] = []
        for f in fields(CallColumns):
            a, b = getattr(first, f.name), getattr(second, f.name)
            parts.append(np.concatenate([a, b]) if isinstance(a, np.ndarray) else a + b)
        return CallColumns(*parts)


@dataclass(slots=True)
class Filled:
    calls: int = 0
    recordings: int = 0
    callbacks: int = 0
    audit_entries: int = 0
    recording_paths: list[str] = field(default_factory=list)  # relative to the data dir


# The tables a fill writes, and their columns, in the order of the rows `LedgerWriter` makes.
_TABLES = (
    (
        "calls",
        "call_id, channel_id, direction, line, caller, dialed, customer, started_at, "
        "purge_after, ended_at, outcome, decision, decided_at, digit, legal_basis, prompt, "
        "prompt_sha256, reason, linked_to, recording_file, purposes, communication_id, "
        "controller_id",
    ),
    ("callbacks", "callback_call_id, missed_call_id, window_seconds, overload, linked_at"),
    ("callback_answers", "missed_call_id, callback_call_id, answered_at"),
    (
        "recordings",
        "id, call_id, line, legal_basis, caller, dialed, customer, decided_at, created_at, "
        "delete_after, sha256, path, linked_to, purposes, size, status",
    ),
    ("audit", "seq, at, action, subject, details, prev_hash, hash"),
)
FILLED_TABLES = tuple(table for table, _ in _TABLES)
_INSERTS = tuple(
    f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * (columns.count(',') + 1))})"
    for table, columns in _TABLES
)
_COPIES = tuple(f"COPY {table} ({columns}) FROM STDIN" for table, columns in _TABLES)

Rows = list[tuple[Any, ...]]


def _load(db_path: str, batches: Connection, chain: _Chain) -> None:
    """The loading process: inserts the batches it receives until it receives None."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    # A bulk load that fails is thrown away, not recovered: no fsync per batch; the file
    # is made durable once at the end.
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute(f"PRAGMA cache_size = {-CACHE_KIB}")
    conn.execute("PRAGMA threads = 2")  # CREATE INDEX may sort on both cores
    # The store's own indexes are dropped for the load and created again from their stored
    # SQL at the end: one sort per index instead of a random insert per row. (The unique
    # indexes behind primary keys stay, and take their random inserts.)
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    while (batch := batches.recv()) is not None:
        rows_of = (*batch[:-1], chain.rows(batch[-1]))
        conn.execute("BEGIN")
        for sql, rows in zip(_INSERTS, rows_of, strict=True):
            conn.executemany(sql, rows)
        conn.execute("COMMIT")
    conn.execute("BEGIN")
    for _, sql in indexes:
        conn.execute(sql)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    fd = os.open(db_path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Templates:
    """Audit JSON for flat details whose values need no escaping, built by `str.format`.

    The first entry of each shape is compared with `storage.audit.canonical` and the
    store's `json.dumps`: a shape whose values would need escaping fails loudly there."""

    def __init__(self) -> None:
        self._shapes: dict[tuple[str, ...], tuple[str, str]] = {}

    def render(
        self,
        seq: int,
        when: str,
        action: str,
        subject: str,
        keys: tuple[str, ...],
        values: Sequence[str],
    ) -> tuple[str, str]:
        """(the canonical body hashed into the chain, the text of the `details` column)."""
        shape = self._shapes.get(keys)
        first = shape is None
        if shape is None:
            if list(keys) != sorted(keys):
                raise CallrecError(f"audit keys {keys} are not in sorted order")
            inner = ",".join(f'"{k}":"{{}}"' for k in keys)
            text = ", ".join(f'"{k}": "{{}}"' for k in keys)
            shape = self._shapes[keys] = (inner, "{{" + text + "}}")
        inner = shape[0].format(*values)
        body = (
            f'{{"action":"{action}","at":"{when}","details":{{{inner}}},'
            f'"seq":{seq},"subject":"{subject}"}}'
        )
        text = shape[1].format(*values)
        if first:
            details = dict(zip(keys, values, strict=True))
            expected = json.dumps(details, sort_keys=True, ensure_ascii=False)
            if body != canonical(seq, when, action, subject, details) or text != expected:
                raise CallrecError(f"audit entry {action} differs from storage.audit")
        return body, text


# The details of `storage.calls.commit_decision`'s audit entry, in sorted order.
_DECISION: tuple[str, ...] = (
    "customer",
    "decision",
    "delete_after",
    "digit",
    "legal_basis",
    "line",
    "prompt",
    "prompt_sha256",
)
_LINKED: tuple[str, ...] = (
    "customer",
    "decision",
    "delete_after",
    "digit",
    "legal_basis",
    "line",
    "linked_to",
    "overload",
    "prompt",
    "prompt_sha256",
)
_STORED: tuple[str, ...] = (
    "call_id",
    "customer",
    "delete_after",
    "legal_basis",
    "line",
    "linked_to",
    "sha256",
    "size",
)

# (time in microseconds, time as text, action, subject, detail keys, detail values)
_Entry = tuple[int, str, str, str, tuple[str, ...], list[str]]


class _Chain:
    """The audit chain from its head on: entries in, hash-chained rows out. It runs in the
    loading process, which has time to spare while the next batch is being made."""

    def __init__(self, key: bytes, seq: int, prev: str) -> None:
        self._key = key
        self._seq = seq
        self._prev = prev
        self._templates = _Templates()

    def rows(self, entries: list[_Entry]) -> Rows:
        """The audit rows, in time order as the store commits them, hash-chained."""
        entries.sort(key=itemgetter(0))
        rows: Rows = []
        for _, when, action, subject, keys, values in entries:
            self._seq += 1
            body, text = self._templates.render(self._seq, when, action, subject, keys, values)
            digest = entry_mac(self._key, self._prev, body)
            rows.append((self._seq, when, action, subject, text, self._prev, digest))
            self._prev = digest
        return rows


class LedgerWriter:
    """Appends batches of calls to the ledger of a store that is not open elsewhere."""

    def __init__(
        self,
        data_dir: Path,
        policy: Policy,
        *,
        audio: bytes | None = None,
        ledger: LedgerConfig | None = None,
        prompt_versions: Mapping[str, str] | None = None,
    ) -> None:
        """`audio`: the content every recording's file will have (the caller writes the
        files at `filled.recording_paths`); None: no files, sizes from the call's length.
        `ledger`: a PostgreSQL ledger of the store (None: its SQLite file).
        `prompt_versions`: the audio version (SHA-256) of each prompt, as
        `prompts/manifest.json` gives them; None: a random one per prompt."""
        self._key = load_key(data_dir / KEY_FILE)
        head = "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
        if ledger is None or ledger.url is None:
            db_path = data_dir / LEDGER_FILE
            with contextlib.closing(sqlite3.connect(db_path)) as conn:
                last = conn.execute(head).fetchone()
        else:
            import psycopg

            extra: dict[str, Any] = {} if ledger.password is None else {"password": ledger.password}
            with psycopg.connect(ledger.url, **extra) as pg_conn:
                last = pg_conn.execute(head).fetchone()
        chain = _Chain(
            load_audit_key(data_dir),
            *((0, GENESIS) if last is None else (int(last[0]), str(last[1]))),
        )
        context = multiprocessing.get_context("spawn")
        receiver, self._sender = context.Pipe(duplex=False)
        target: Callable[..., None]
        args: tuple[Any, ...]
        if ledger is None or ledger.url is None:
            target, args = _load, (str(data_dir / LEDGER_FILE), receiver, chain)
        else:
            target, args = _load_pg, (ledger.url, ledger.password, receiver, chain)
        self._loader = context.Process(target=target, args=args, name="ledger-load", daemon=True)
        self._loader.start()
        receiver.close()
        # As `flows.retention.keeping`: each line's retention, its purposes.
        self._due = {
            months: DueTimes(months, policy.timezone)
            for months in {line.retention_months for line in policy.lines}
        }
        self._months = {line.name: line.retention_months for line in policy.lines}
        self._purposes = {line.name: purposes_text(line.purposes) for line in policy.lines}
        self._controller_id = default_controller_id(data_dir)  # the store's, opened there
        self._audio = None if audio is None else (len(audio), hashlib.sha256(audio).hexdigest())
        self._window = policy.callback_window.total_seconds()
        self._prompt_sha = dict(prompt_versions or {})
        for line in policy.lines:  # stands for prompts/manifest.json: one version per prompt
            self._prompt_sha.setdefault(line.prompts.notice, os.urandom(32).hex())
        self._pseudonyms: dict[str, str] = {}
        self.filled = Filled()

    def _pseudonym(self, number: str | None) -> str:
        if number is None:
            return "anonymous"
        found = self._pseudonyms.get(number)
        if found is None:
            found = self._pseudonyms[number] = pseudonym(self._key, number)
        return found

    def _due_times(self, lines: Sequence[str], us: Micros) -> Micros:
        """`flows.retention.keeping`'s date for each call: its line's retention from `us`."""
        months = [self._months[line] for line in lines]
        kinds = set(months)
        if len(kinds) == 1:
            return self._due[kinds.pop()](us)
        due = np.empty_like(us)
        by_months = np.array(months, dtype=np.int64)
        for m in kinds:
            where = by_months == m
            due[where] = self._due[m](us[where])
        return due

    def add(self, c: CallColumns) -> None:
        """Appends the calls of `c`, each as `storage.calls` (start, decision, end) and
        `storage.ingest` (a recording) write it."""
        if not len(c):
            return
        started = texts(c.started)
        if started[0] != ts(moment(int(c.started[0]))):
            raise CallrecError("numpy's timestamps differ from storage.db.ts")
        has_decision = c.decided != NO_TIME
        decided = [
            d if has else None
            for d, has in zip(texts(c.decided), has_decision.tolist(), strict=True)
        ]
        ended = texts(c.ended)
        first = self.filled.calls
        prompt_sha = [None if p is None else self._prompt_sha[p] for p in c.prompt]
        # A call's numbers go after its line's retention from its start, until its decision
        # fixes its conversation's date (`flows.retention.keeping`), its recording's too.
        purge = texts(self._due_times(c.line, np.where(has_decision, c.decided, c.started)))
        calls = list(
            zip(
                c.call_id,
                [f"{s // SECOND}.{first + k}" for k, s in enumerate(c.started.tolist())],
                c.direction,
                c.line,
                c.caller,
                c.dialed,
                c.customer,
                started,
                purge,
                ended,
                c.outcome,
                c.decision,
                decided,
                c.digit,
                c.basis,
                c.prompt,
                prompt_sha,
                c.reason,
                c.linked_to,
                [
                    None if r is None else f"{SPOOL}/{i}.wav"
                    for i, r in zip(c.call_id, c.recording_id, strict=True)
                ],
                [
                    self._purposes[line] if d else None
                    for line, d in zip(c.line, decided, strict=True)
                ],
                # A linked callback joins its missed call's communication.
                [
                    i if linked is None else linked
                    for i, linked in zip(c.call_id, c.linked_to, strict=True)
                ],
                _const(self._controller_id, len(c)),
                strict=True,
            )
        )
        entries: list[_Entry] = []
        callbacks: Rows = []
        answers: Rows = []
        decided_us = c.decided.tolist()
        for k in np.flatnonzero(has_decision).tolist():
            values = [
                self._pseudonym(c.customer[k]),
                c.decision[k],
                purge[k],
                c.digit[k] or "",
                str(c.basis[k]),
                c.line[k],
            ]
            tail = [c.prompt[k] or "", prompt_sha[k] or ""]
            linked = c.linked_to[k]
            if linked is None:
                keys, values = _DECISION, values + tail
            else:
                keys, values = _LINKED, [*values, linked, "off", *tail]
                callbacks.append((c.call_id[k], linked, self._window, 0, decided[k]))
                if c.outcome[k] == "answered":  # the customer picked up: it answers its call
                    answers.append((linked, c.call_id[k], ended[k]))
            entries.append(
                (decided_us[k], str(decided[k]), "decision.committed", c.call_id[k], keys, values)
            )
        recordings = self._recordings(c, decided, purge, entries)
        self.filled.calls += len(c)
        self.filled.callbacks += len(callbacks)
        self.filled.audit_entries += len(entries)
        self._send(calls, callbacks, answers, recordings, entries)

    def _recordings(
        self, c: CallColumns, decided: list[str | None], purge: list[str], entries: list[_Entry]
    ) -> Rows:
        which = [k for k, r in enumerate(c.recording_id) if r is not None]
        if not which:
            return []
        index = np.array(which, dtype=np.int64)
        stored_at = texts(c.ingested[index])
        lengths = ((c.ended[index] - c.decided[index]) // SECOND).tolist()
        rows: Rows = []
        for n, k in enumerate(which):
            recording_id, made, basis = str(c.recording_id[k]), str(decided[k]), str(c.basis[k])
            path = f"recordings/{made[:4]}/{made[5:7]}/{made[8:10]}/{recording_id}.wav"
            if self._audio is None:
                size = WAV_HEADER + lengths[n] * BYTES_PER_SECOND
                sha256 = os.urandom(32).hex()  # no file is written for this ledger
            else:
                size, sha256 = self._audio
                self.filled.recording_paths.append(path)
            linked = c.linked_to[k]
            line = c.line[k]
            rows.append(
                (
                    recording_id,
                    c.call_id[k],
                    line,
                    basis,
                    c.caller[k],
                    c.dialed[k],
                    c.customer[k],
                    made,
                    made,
                    purge[k],
                    sha256,
                    path,
                    linked,
                    self._purposes[line],
                    size,
                    "stored",
                )
            )
            values = [
                c.call_id[k],
                self._pseudonym(c.customer[k]),
                purge[k],
                basis,
                line,
                linked or "",
                sha256,
                str(size),
            ]
            entries.append(
                (
                    int(c.ingested[k]),
                    stored_at[n],
                    "recording.stored",
                    recording_id,
                    _STORED,
                    values,
                )
            )
        self.filled.recordings += len(rows)
        return rows

    def _send(self, *batch: Rows | list[_Entry]) -> None:
        """Hand a batch to the loading process (blocks while it is a batch behind)."""
        try:
            self._sender.send(batch)
        except OSError as error:
            raise CallrecError(
                f"the ledger loading process stopped (exit code {self._loader.exitcode})"
            ) from error

    def close(self) -> None:
        """The loader then rebuilds the indexes, folds the WAL in and fsyncs the file."""
        with contextlib.suppress(OSError):
            self._sender.send(None)
        self._sender.close()
        self._loader.join()
        if self._loader.exitcode != 0:
            raise CallrecError(f"loading the ledger failed (exit code {self._loader.exitcode})")


_SCHEMA = "SELECT oid FROM pg_namespace WHERE nspname = current_schema()"


def _load_pg(url: str, password: str | None, batches: Connection, chain: _Chain) -> None:
    """The loading process on PostgreSQL: COPY of each batch into tables without their
    indexes and constraints, which are built again at the end from their definitions, as
    the migrations made them (one sort per index, one join per foreign key, instead of an
    index entry and a foreign-key look-up per row)."""
    import psycopg  # only the PostgreSQL fill needs it

    extra: dict[str, Any] = {} if password is None else {"password": password}
    with psycopg.connect(url, autocommit=True, **extra) as conn:
        # A bulk load that fails is thrown away, not recovered: no flush per commit. This
        # session only; the store's own sessions commit with synchronous_commit = on.
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '512MB'")
        tables = list(FILLED_TABLES)
        # The constraints on the filled tables and those that point at them: foreign keys
        # go first and come back last, primary and unique keys the other way round.
        constraints = conn.execute(
            "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid), "
            "c.contype = 'f' FROM pg_constraint c WHERE c.contype IN ('p', 'u', 'f') "
            f"AND c.connamespace = ({_SCHEMA}) "
            "AND (c.conrelid = ANY(%(t)s::regclass[]) OR c.confrelid = ANY(%(t)s::regclass[])) "
            "ORDER BY c.contype = 'f' DESC, c.conname",
            {"t": tables},
        ).fetchall()
        indexes = conn.execute(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = "
            "current_schema() AND i.tablename = ANY(%s) AND NOT EXISTS (SELECT 1 FROM "
            f"pg_constraint c WHERE c.conname = i.indexname AND c.connamespace = ({_SCHEMA}))",
            (tables,),
        ).fetchall()
        with conn.transaction():
            for table, name, _, _ in constraints:
                conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
            for name, _ in indexes:
                conn.execute(f'DROP INDEX "{name}"')
        while (batch := batches.recv()) is not None:
            rows_of = (*batch[:-1], chain.rows(batch[-1]))
            with conn.transaction():
                for sql, rows in zip(_COPIES, rows_of, strict=True):
                    if not rows:
                        continue
                    with conn.cursor().copy(sql) as copy:
                        for row in rows:
                            copy.write_row(row)
        with conn.transaction():
            for table, name, definition, _ in reversed(constraints):
                conn.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
            for _, sql in indexes:
                conn.execute(sql)
        conn.execute("ANALYZE")
        # Written out now rather than by the checkpointer while the next benchmark is timed
        # (a superuser or pg_checkpoint member may; otherwise the server does it in time).
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("CHECKPOINT")


# ------------------------------------------------------------------ shapes of a ledger


def customer_number(index: int) -> str:
    """A Slovenian number per customer index (+386 3x xxx xxx: no line's number)."""
    return f"+386{30 + index // 1_000_000}{index % 1_000_000:06d}"


def _ids(rng: np.random.Generator, n: int) -> list[str]:
    """Call ids as the controller makes them: 32 random hex digits."""
    digits = rng.bytes(16 * n).hex()
    return [digits[i : i + 32] for i in range(0, 32 * n, 32)]


def _recording_ids(rng: np.random.Generator, created: Micros) -> list[str]:
    """Recording ids as the store makes them (`make_recording_id`): the creation time, then
    random digits."""
    tails = rng.bytes(10 * len(created)).hex()
    return [
        make_recording_id(us // 1000, tails[20 * k : 20 * k + 20])
        for k, us in enumerate(created.tolist())
    ]


def _between(rng: np.random.Generator, low: float, high: float, unit: int, n: int) -> Micros:
    """Uniformly random durations from `low` to `high` units, in microseconds."""
    return (rng.uniform(low, high, n) * unit).astype(np.int64)


def _pick(mask: NDArray[np.bool_], yes: Iterable[Any], no: Iterable[Any]) -> list[Any]:
    return [a if m else b for m, a, b in zip(mask.tolist(), yes, no, strict=True)]


def _const(value: Any, n: int) -> list[Any]:
    return [value] * n


@dataclass(frozen=True, slots=True)
class MissedSample:
    customer: str
    ended: int  # microseconds since the epoch
    call_id: str
    basis: str  # its legal basis: a callback of the same kind answers it


@dataclass(slots=True)
class BusyLedger:
    """What the lookup benchmark needs to know about the ledger it filled."""

    filled: Filled
    customers: int
    start: int  # microseconds since the epoch: the first call
    end: int
    open_missed: list[MissedSample]  # a sample of missed calls nobody has called back


def _lines(policy: Policy) -> tuple[Line, Line]:
    sales = next(line for line in policy.lines if line.policy is LinePolicy.NOTICE)
    service = next(line for line in policy.lines if line.policy is LinePolicy.CONSENT)
    return sales, service


CALLBACK_SHARE = 0.97 * 0.10 * 0.70  # callbacks per inbound call (see fill_busy_ledger)


def fill_busy_ledger(
    data_dir: Path,
    policy: Policy,
    calls: int,
    end: datetime,
    *,
    seed: int = 8,
    samples: int = 20_000,
    ledger: LedgerConfig | None = None,
) -> BusyLedger:
    """Exactly `calls` calls over the six months before `end`: a busy ledger at its largest.

    Every call is younger than the retention period, so no number has been scrubbed and
    the callback index holds every missed call (the lookup's worst case). Of the inbound
    calls 3 % are anonymous; 30 % go to sales, 70 % to service (65 % press 1, 28 % press
    2, 7 % say nothing); 2 % hang up in the notice, 10 % are missed, the rest answered.
    70 % of the missed calls with a number are called back within the hour (about 7
    callbacks per 100 inbound calls). Customers call 5 times each on average."""
    rng = np.random.default_rng(seed)
    writer = LedgerWriter(data_dir, policy, ledger=ledger)
    end_us = micros(end)
    # Inbound calls stop two hours before `end`, so that every call and callback has ended.
    start_us, last_us = end_us - 182 * DAY, end_us - 2 * HOUR
    customers = max(calls // 5, 10)
    inbound = max(round(calls / (1 + CALLBACK_SHARE)), 1)
    step = (last_us - start_us) / inbound
    open_missed: list[MissedSample] = []
    written = 0
    try:
        for first in range(0, inbound, BATCH):
            n = min(BATCH, inbound - first)
            offsets = (np.arange(first, first + n) + rng.random(n)) * step
            started = start_us + offsets.astype(np.int64)
            batch, missed = _busy_batch(rng, policy, started, customers, call_back=True)
            # Callbacks come last in a batch: a count over the target cuts them first.
            batch = batch.head(min(len(batch), calls - written))
            kept = set(batch.call_id)
            open_missed.extend(m for m in missed if m.call_id in kept)
            writer.add(batch)
            written += len(batch)
        if written < calls:
            # Fewer callbacks than expected: the rest are inbound calls at random times.
            n = calls - written
            started = np.sort(rng.integers(start_us, last_us, size=n))
            batch, missed = _busy_batch(rng, policy, started, customers, call_back=False)
            open_missed.extend(missed)
            writer.add(batch)
            written += len(batch)
    finally:
        writer.close()
    sample = random.Random(seed).sample(open_missed, min(samples, len(open_missed)))
    return BusyLedger(writer.filled, customers, start_us, end_us, sample)


def _busy_batch(
    rng: np.random.Generator,
    policy: Policy,
    started: Micros,
    customers: int,
    *,
    call_back: bool,
) -> tuple[CallColumns, list[MissedSample]]:
    """Inbound calls started at `started`, then (`call_back`) the callbacks answering them;
    and the missed calls nobody calls back."""
    sales, service = _lines(policy)
    n = len(started)
    anonymous = rng.random(n) < 0.03
    numbers = [customer_number(k) for k in rng.integers(customers, size=n).tolist()]
    customer = _pick(anonymous, _const(None, n), numbers)
    on_sales = rng.random(n) < 0.30
    service_number = [service.numbers[k] for k in rng.integers(len(service.numbers), size=n)]
    fate = rng.random(n)
    abandoned = fate < 0.02
    missed = (fate >= 0.02) & (fate < 0.12)
    choice = rng.random(n)
    record = ~abandoned & (on_sales | (choice < 0.65))
    refuse = ~abandoned & ~on_sales & (choice >= 0.65) & (choice < 0.93)
    decided_at = started + _between(rng, 8, 26, SECOND, n)
    ended = np.where(
        abandoned,
        started + _between(rng, 2, 20, SECOND, n),
        decided_at
        + np.where(missed, _between(rng, 20, 180, SECOND, n), _between(rng, 30, 900, SECOND, n)),
    )
    recorded = record & ~missed & ~abandoned
    call_ids, recording_ids = _ids(rng, n), _recording_ids(rng, decided_at)
    decision = [
        "record" if r else "refuse" if f else "none"
        for r, f in zip(record.tolist(), refuse.tolist(), strict=True)
    ]
    inbound = CallColumns(
        call_id=call_ids,
        direction=_const("inbound", n),
        line=_pick(on_sales, _const(sales.name, n), _const(service.name, n)),
        caller=customer,
        dialed=_pick(on_sales, _const(sales.numbers[0], n), service_number),
        customer=customer,
        started=started,
        ended=ended,
        outcome=[
            "abandoned" if a else "missed" if m else "answered"
            for a, m in zip(abandoned.tolist(), missed.tolist(), strict=True)
        ],
        decision=decision,
        decided=np.where(abandoned, NO_TIME, decided_at),
        digit=[
            None if s or a else "1" if d == "record" else "2" if d == "refuse" else None
            for s, a, d in zip(on_sales.tolist(), abandoned.tolist(), decision, strict=True)
        ],
        basis=[
            None if a else LegalBasis.ZEKOM2_214_7.value if s else LegalBasis.CONSENT.value
            for a, s in zip(abandoned.tolist(), on_sales.tolist(), strict=True)
        ],
        prompt=[
            None if a else sales.prompts.notice if s else service.prompts.notice
            for a, s in zip(abandoned.tolist(), on_sales.tolist(), strict=True)
        ],
        reason=[  # a decision's: a caller who hung up in the notice left none
            None
            if a
            else "sales line: notice played"
            if s
            else {"record": "consented", "refuse": "refused"}.get(d, "no key after two questions")
            for a, s, d in zip(abandoned.tolist(), on_sales.tolist(), decision, strict=True)
        ],
        linked_to=_const(None, n),
        recording_id=_pick(recorded, recording_ids, _const(None, n)),
        ingested=ended + _between(rng, 1, 5, SECOND, n),
    )
    called_back = missed & ~anonymous & (rng.random(n) < (0.70 if call_back else 0.0))
    open_missed = [
        MissedSample(str(customer[k]), int(ended[k]), call_ids[k], str(inbound.basis[k]))
        for k in np.flatnonzero(missed & ~anonymous & ~called_back).tolist()
    ]
    return CallColumns.join(inbound, _callbacks(rng, inbound, called_back)), open_missed


def _callbacks(
    rng: np.random.Generator, missed: CallColumns, which: NDArray[np.bool_]
) -> CallColumns:
    """Agents call the `which` missed callers back within the hour: the same communication."""
    index = np.flatnonzero(which)
    pick = index.tolist()
    n = len(pick)
    started = missed.ended[index] + _between(rng, 5, 55, MINUTE, n)
    decided = started + _between(rng, 1, 3, SECOND, n)
    ended = decided + _between(rng, 30, 600, SECOND, n)
    # What a callback inherits from the missed call it answers, as the flow decides it.
    inherited = [
        same_communication(
            PriorCallFound(
                call_id=missed.call_id[k],
                line=missed.line[k],
                legal_basis=LegalBasis(str(missed.basis[k])),
                decision=Decision(missed.decision[k]),
                consent_withdrawn=False,
            )
        )
        for k in pick
    ]
    recorded = [decision is Decision.RECORD for decision, _ in inherited]
    call_ids, recording_ids = _ids(rng, n), _recording_ids(rng, decided)
    customer = [missed.customer[k] for k in pick]
    return CallColumns(
        call_id=call_ids,
        direction=_const("callback", n),
        line=[missed.line[k] for k in pick],
        caller=_const(None, n),  # the agent's extension is no E.164 number
        dialed=customer,
        customer=customer,
        started=started,
        ended=ended,
        outcome=_const("answered", n),
        decision=[decision.value for decision, _ in inherited],
        decided=decided,
        digit=_const(None, n),
        basis=[missed.basis[k] for k in pick],
        prompt=_const(None, n),
        reason=[reason for _, reason in inherited],
        linked_to=[missed.call_id[k] for k in pick],
        recording_id=[i if r else None for i, r in zip(recording_ids, recorded, strict=True)],
        ingested=ended + _between(rng, 1, 5, SECOND, n),
    )


def fill_expired_recordings(
    data_dir: Path,
    policy: Policy,
    count: int,
    now: datetime,
    audio: bytes,
    *,
    seed: int = 3,
    ledger: LedgerConfig | None = None,
) -> Filled:
    """`count` answered, recorded calls made 7 months before `now`, spread over 28 days:
    every recording is past its delete-after date. The caller writes `audio` at each of
    the returned paths."""
    rng = np.random.default_rng(seed)
    sales, service = _lines(policy)
    writer = LedgerWriter(data_dir, policy, audio=audio, ledger=ledger)
    first_us = micros(now) - 7 * 31 * DAY
    step = 28 * DAY / max(count, 1)
    try:
        for first in range(0, count, BATCH):
            n = min(BATCH, count - first)
            started = first_us + (np.arange(first, first + n) * step).astype(np.int64)
            on_sales = (np.arange(first, first + n) % 5) < 2
            customer: list[str | None] = [
                customer_number(k) for k in rng.integers(max(count // 3, 1), size=n).tolist()
            ]
            decided = started + 15 * SECOND
            ended = decided + _between(rng, 30, 300, SECOND, n)
            writer.add(
                CallColumns(
                    call_id=_ids(rng, n),
                    direction=_const("inbound", n),
                    line=_pick(on_sales, _const(sales.name, n), _const(service.name, n)),
                    caller=customer,
                    dialed=_pick(
                        on_sales, _const(sales.numbers[0], n), _const(service.numbers[0], n)
                    ),
                    customer=customer,
                    started=started,
                    ended=ended,
                    outcome=_const("answered", n),
                    decision=_const("record", n),
                    decided=decided,
                    digit=_pick(on_sales, _const(None, n), _const("1", n)),
                    basis=_pick(
                        on_sales,
                        _const(sales.legal_basis.value, n),
                        _const(service.legal_basis.value, n),
                    ),
                    prompt=_pick(
                        on_sales, _const(sales.prompts.notice, n), _const(service.prompts.notice, n)
                    ),
                    reason=_pick(
                        on_sales, _const("sales line: notice played", n), _const("consented", n)
                    ),
                    linked_to=_const(None, n),
                    recording_id=[*_recording_ids(rng, decided)],
                    ingested=ended + 2 * SECOND,
                )
            )
    finally:
        writer.close()
    return writer.filled
