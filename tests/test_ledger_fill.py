"""A ledger the benchmarks fill in bulk (`bench.ledger_fill`) is the ledger the controller
would have written call by call: the same rows, the same audit entries, and the store reads
it back alike, on both backends."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from storage_helpers import POLICY, T0, ledger_for, open_store, raw_ledger, wav_bytes

from bench.ledger_fill import (
    MINUTE,
    NO_TIME,
    SPOOL,
    CallColumns,
    LedgerWriter,
    _busy_batch,
    micros,
    moment,
)
from flows.outcome import Outcome
from flows.policy import Decision, Direction, LegalBasis
from flows.retention import keeping, numbers_deleted_after
from storage.datadir import default_controller_id
from storage.ports import CallStart, DecisionRecord, RecordingRow
from storage.sqlite import KEY_FILE
from storage.store import Store

CALLS = 160  # inbound calls: enough for every kind (abandoned, missed, called back, recorded)
CALL_ENTRIES = ("decision.committed", "recording.stored")  # what a call appends to the audit
VERSIONS = {line.prompts.notice: f"{n:064x}" for n, line in enumerate(POLICY.lines)}


def _calls() -> CallColumns:
    rng = np.random.default_rng(11)
    started = micros(T0) + np.arange(CALLS, dtype=np.int64) * 3 * MINUTE
    batch, _ = _busy_batch(rng, POLICY, started, 25, call_back=True)
    kinds = set(batch.outcome) | set(batch.direction) | set(batch.decision)
    assert {"abandoned", "missed", "answered", "callback", "record", "refuse"} <= kinds
    assert any(r is not None for r in batch.recording_id)
    return batch


async def _as_the_controller(store: Store, c: CallColumns, spool: Path, audio: bytes) -> None:
    """Each call through the store's ports as a session drives them, in time order."""
    steps: list[tuple[int, int, int]] = []
    for k in range(len(c)):
        steps.append((int(c.started[k]), 0, k))
        if c.decided[k] != NO_TIME:
            steps.append((int(c.decided[k]), 1, k))
        steps.append((int(c.ended[k]), 2, k))
        if c.recording_id[k] is not None:
            steps.append((int(c.ingested[k]), 3, k))
    for at, step, k in sorted(steps):
        call_id = c.call_id[k]
        line = POLICY.line_named(c.line[k])
        assert line is not None
        if step == 0:
            started = moment(at)
            await store.start_call(
                CallStart(
                    call_id=call_id,
                    channel_id=f"{at // 1_000_000}.{k}",
                    direction=Direction(c.direction[k]),
                    line=line.name,
                    caller=c.caller[k],
                    dialed=c.dialed[k],
                    started_at=started,
                    customer=c.customer[k],
                    communication_id=call_id,
                    purge_after=numbers_deleted_after(line, started, tz=POLICY.timezone),
                )
            )
        elif step == 1:
            decided = moment(at)
            linked = c.linked_to[k]
            recorded = c.recording_id[k] is not None
            prompt = c.prompt[k]
            await store.commit_decision(
                DecisionRecord(
                    call_id=call_id,
                    decision=Decision(c.decision[k]),
                    legal_basis=LegalBasis(str(c.basis[k])),
                    digit=c.digit[k],
                    reason=str(c.reason[k]),
                    prompt=prompt,
                    prompt_sha256=None if prompt is None else VERSIONS[prompt],
                    decided_at=decided,
                    linked_to=linked,
                    window=None if linked is None else POLICY.callback_window,
                    overload=False,
                    communication_id=linked,
                    keep=keeping(line, decided, tz=POLICY.timezone),
                    recording_file=f"{SPOOL}/{call_id}.wav" if recorded else None,
                )
            )
        elif step == 2:
            await store.end_call(call_id, moment(at), Outcome(c.outcome[k]))
        else:
            source = spool / f"{call_id}.wav"
            source.write_bytes(audio)
            await store.ingest(call_id, source, moment(at))


def _seen(row: RecordingRow, root: Path, ids: dict[str, str]) -> RecordingRow:
    """`row` as it reads in any store: its path relative to the store, its id mapped."""
    kept = ids.get(row.id, row.id)
    path = None if row.path is None else str(Path(row.path).relative_to(root))
    return dataclasses.replace(
        row, id=kept, path=None if path is None else path.replace(row.id, kept)
    )


def _tables(data_dir: Path, recording_ids: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Every row a call leaves, recording ids as `recording_ids` maps them (the store draws
    their random part), each store's own controller id alike; of the audit, the calls'
    entries in order, without their MACs (each store has its own audit key; `verify`
    checks each chain)."""

    names = {**recording_ids, default_controller_id(data_dir): "the store's controller"}
    name = re.compile("|".join(map(re.escape, names)))

    def mapped(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return name.sub(lambda found: names[found[0]], value)

    queries = {
        "calls": "SELECT * FROM calls ORDER BY call_id",
        "callbacks": "SELECT * FROM callbacks ORDER BY callback_call_id",
        "callback_answers": "SELECT * FROM callback_answers ORDER BY missed_call_id",
        "recordings": "SELECT * FROM recordings ORDER BY call_id",
        "audit": "SELECT at, action, subject, details FROM audit "
        f"WHERE action IN {CALL_ENTRIES} ORDER BY seq",
        "pending_ingests": "SELECT * FROM pending_ingests",
    }
    tables: dict[str, list[dict[str, Any]]] = {}
    with raw_ledger(data_dir) as raw:
        for table, sql in queries.items():
            cursor = raw.execute(sql)
            columns = [column[0] for column in cursor.description]
            tables[table] = [
                {name: mapped(v) for name, v in zip(columns, row, strict=True)}
                for row in cursor.fetchall()
            ]
    return tables


def _schema(data_dir: Path, ledger: str) -> set[tuple[str, ...]]:
    """The ledger's tables, indexes, keys and triggers, as its migrations made them."""
    with raw_ledger(data_dir) as raw:
        if ledger == "sqlite":
            sql = "SELECT type, name, sql FROM sqlite_master"
        else:
            sql = (
                "SELECT 'constraint', conrelid::regclass::text || '.' || conname, "
                "pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE connamespace = current_schema()::regnamespace "
                "UNION SELECT 'index', indexname, regexp_replace(indexdef, ' ON \\S+\\.', ' ON ') "
                "FROM pg_indexes WHERE schemaname = current_schema() "
                "UNION SELECT 'trigger', t.tgname, c.relname FROM pg_trigger t "
                "JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal "
                "AND c.relnamespace = current_schema()::regnamespace"
            )
        return {tuple(map(str, row)) for row in raw.execute(sql).fetchall()}


async def test_a_filled_ledger_reads_back_like_calls_the_controller_stored(
    tmp_path: Path, ledger: str
) -> None:
    """The bulk fill writes the rows, audit entries and recordings the controller's calls
    write through the store, and the store's reads (calls, recordings, callback look-ups,
    verify) answer the same on both ledgers."""
    calls = _calls()
    audio = wav_bytes(frames=800)
    real_dir, fill_dir, spool = tmp_path / "real", tmp_path / "fill", tmp_path / "spool"
    spool.mkdir()
    store = await open_store(real_dir, POLICY, create=True)
    await store.close()
    fill_dir.mkdir()
    # One pseudonym key: the same pseudonyms in both audits (each has its own audit key).
    shutil.copy2(real_dir / KEY_FILE, fill_dir / KEY_FILE)
    store = await open_store(fill_dir, POLICY, create=True)
    await store.close()

    writer = LedgerWriter(
        fill_dir, POLICY, audio=audio, ledger=ledger_for(fill_dir), prompt_versions=VERSIONS
    )
    try:
        writer.add(calls)
    finally:
        writer.close()
    for path in writer.filled.recording_paths:
        (fill_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (fill_dir / path).write_bytes(audio)

    real = await open_store(real_dir, POLICY)
    filled = await open_store(fill_dir, POLICY)
    try:
        await _as_the_controller(real, calls, spool, audio)
        real_recordings = await real.recordings()
        fill_recordings = await filled.recordings()
        by_call = {r.call_id: r.id for r in fill_recordings}
        ids = {r.id: by_call[r.call_id] for r in real_recordings}
        for made, kept in ids.items():
            assert made[:12] == kept[:12], "a recording id's time differs"
        assert _tables(real_dir, ids) == _tables(fill_dir, {})
        assert len(fill_recordings) == writer.filled.recordings > 0

        assert {_seen(r, real_dir, ids) for r in real_recordings} == {
            _seen(r, fill_dir, {}) for r in fill_recordings
        }
        for call_id in calls.call_id:
            as_made, as_filled = await real.get_call(call_id), await filled.get_call(call_id)
            assert as_made is not None and as_filled is not None
            assert as_made.controller_id == default_controller_id(real_dir)
            assert as_filled.controller_id == default_controller_id(fill_dir)
            assert as_made == dataclasses.replace(as_filled, controller_id=as_made.controller_id)
        for k in np.flatnonzero(np.array(calls.outcome) == "missed").tolist():
            customer = calls.customer[k]
            if customer is None:
                continue
            since = moment(int(calls.started[k]))
            basis = LegalBasis(str(calls.basis[k]))
            assert await real.callback_candidates(customer, since, basis) == (
                await filled.callback_candidates(customer, since, basis)
            )
        assert _schema(fill_dir, ledger) == _schema(real_dir, ledger)
        assert (await filled.verify()).problems == ()
        assert (await real.verify()).problems == ()
    finally:
        await real.close()
        await filled.close()
