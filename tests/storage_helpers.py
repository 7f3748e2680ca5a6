"""Shared by the storage tests: real WAV files and calls driven through the Ledger port."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import secrets
import sqlite3
import wave
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flows.outcome import Outcome
from flows.policy import Decision, Direction, LegalBasis, Policy
from storage.backends import PgStore
from storage.ledgers import LedgerConfig
from storage.ports import CallStart, DecisionRecord
from storage.sqlite import SqliteStore
from storage.store import Store

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)  # a Monday, no holiday
SALES = "+38640404045"
SERVICE = "+38640404040"
ALICE = "+38641111111"
BOB = "+38641222222"
POLICY = Policy()


def ledger_for(data_dir: Path) -> LedgerConfig | None:
    """The ledger of the store at `data_dir` in this test's backend: None (its SQLite file),
    or a PostgreSQL schema of its own, named after the directory so that a crash test's
    child process finds the same one."""
    database = os.environ.get("CALLREC_TEST_LEDGER_DB")
    if not database:
        return None
    import pg_server  # only the PostgreSQL runs need a server

    where = str(Path(data_dir).absolute()).encode()
    schema = f"s_{hashlib.sha256(where).hexdigest()[:20]}"
    pg_server.ensure_schema(database, schema)
    return LedgerConfig(url=pg_server.with_schema(database, schema))


LEDGER_INTEGRITY: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)
try:
    import psycopg

    # A constraint, or a PL/pgSQL guard raising (the append-only triggers).
    LEDGER_INTEGRITY += (psycopg.IntegrityError, psycopg.errors.RaiseException)
except ImportError:  # pragma: no cover - psycopg is a dependency
    pass
_DROP_TRIGGER = re.compile(r"^DROP TRIGGER ((audit|access_log)_no_\w+)$")


class _RawPg:
    """Statements written for SQLite on a PostgreSQL ledger, outside the store."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        from storage.pg_sql import translate

        sql = _DROP_TRIGGER.sub(r"DROP TRIGGER \1 ON \2", sql)
        return self._conn.execute(translate(sql), tuple(params))


@contextlib.contextmanager
def raw_ledger(data_dir: Path) -> Iterator[Any]:
    """Another connection to the ledger of the store at `data_dir`, as an attacker or a
    second reader would have it (statements in SQLite's spelling), each statement committed."""
    ledger = ledger_for(data_dir)
    if ledger is None:
        with contextlib.closing(sqlite3.connect(data_dir / "ledger.sqlite3")) as raw, raw:
            yield raw
        return
    assert ledger.url is not None
    with psycopg.connect(ledger.url, autocommit=True) as conn:
        yield _RawPg(conn)


async def open_store(data_dir: Path, policy: Policy, **options: Any) -> Store:
    """The store at `data_dir` on this test's backend (`SqliteStore.open`'s options; SQLite's
    own busy timeout means nothing to PostgreSQL)."""
    ledger = ledger_for(data_dir)
    if ledger is None:
        return await SqliteStore.open(data_dir, policy, **options)
    options.pop("busy_timeout", None)
    return await PgStore.open(data_dir, policy, ledger, **options)


def wav_bytes(frames: int = 1600, rate: int = 8000, seed: int = 0) -> bytes:
    """A mono 16-bit WAV with `frames` frames of varying samples (0: header only)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(bytes((i * 7 + seed) % 256 for i in range(frames * 2)))
    return out.getvalue()


def new_id() -> str:
    return secrets.token_hex(16)


def alice_calls(call_id: str, channel_id: str) -> CallStart:
    """The start of Alice's inbound call to the service line at T0."""
    return CallStart(
        call_id=call_id,
        channel_id=channel_id,
        direction=Direction.INBOUND,
        line="service",
        caller=ALICE,
        dialed=SERVICE,
        started_at=T0,
        customer=ALICE,
    )


async def keep_recording(store: Store, recording_id: str) -> None:
    """Make a recording due only in 2999, so that a sweep passes it by."""
    await store.ctx.db.write(
        lambda tx: tx.run(
            "UPDATE recordings SET delete_after = '2999-01-01T00:00:00.000000Z' WHERE id = ?",
            (recording_id,),
        ),
        "a test keeping one recording",
    )


async def record_call(
    store: Store,
    spool: Path,
    *,
    at: datetime = T0,
    line: str = "service",
    caller: str | None = ALICE,
    decision: Decision = Decision.RECORD,
    outcome: Outcome = Outcome.ANSWERED,
    audio: bytes | None = None,
    direction: Direction = Direction.INBOUND,
    linked_to: str | None = None,
    window: timedelta | None = None,
    overload: bool = False,
    end: bool = True,
) -> tuple[str, Path]:
    """A call through the ledger as the controller makes it; its MixMonitor file in `spool`
    when the decision is RECORD. Returns (call id, spool file)."""
    call_id = new_id()
    basis = LegalBasis.ZEKOM2_214_7 if line == "sales" else LegalBasis.CONSENT
    number = SALES if line == "sales" else SERVICE
    inbound = direction is Direction.INBOUND
    await store.start_call(
        CallStart(
            call_id=call_id,
            channel_id=f"{at.timestamp():.3f}",
            direction=direction,
            line=line,
            caller=caller if inbound else None,
            dialed=number if inbound else caller,
            started_at=at,
            customer=caller,
        )
    )
    await store.commit_decision(
        DecisionRecord(
            call_id=call_id,
            decision=decision,
            legal_basis=basis,
            digit="1" if decision is Decision.RECORD and basis is LegalBasis.CONSENT else None,
            reason="test",
            prompt="callrec-consent-question",
            prompt_sha256="ab" * 32,
            decided_at=at + timedelta(seconds=12),
            linked_to=linked_to,
            window=window,
            overload=overload,
            communication_id=linked_to,
        )
    )
    path = spool / f"{call_id}.wav"
    if decision is Decision.RECORD:
        await store.set_recording_file(call_id, str(path))
        path.write_bytes(wav_bytes(seed=len(call_id)) if audio is None else audio)
    if end:
        await store.end_call(call_id, at + timedelta(minutes=3), outcome)
    return call_id, path
