"""Shared by the storage tests: real WAV files and calls driven through the Ledger port."""

from __future__ import annotations

import io
import secrets
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flows.outcome import Outcome
from flows.policy import Decision, Direction, LegalBasis, Policy
from storage.ports import CallStart, DecisionRecord
from storage.sqlite import SqliteStore

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)  # a Monday, no holiday
SALES = "+38640404045"
SERVICE = "+38640404040"
ALICE = "+38641111111"
BOB = "+38641222222"
POLICY = Policy()


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


async def record_call(
    store: SqliteStore,
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
