"""The store as its callers know it: `storage.ports.Ledger`, `RecordingStore` and `Queries`
answered by the use cases of storage/, over whichever ledger and blob store it was opened
with (`storage.factory.open_store`). A facade: it holds the parts and delegates, no more.

Every change to a file is bracketed by the ledger so that a `kill -9` anywhere leaves a
state `reconcile` (run at start) or the next `sweep` completes: `storage.ingest`,
`storage.deletion` and `storage.access` (exports) each say how. Times come in as arguments;
storage never reads the clock. Phone numbers and other caller supplied text only ever reach
SQL as parameters and never a path: files are named by ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Self

from flows.outcome import Outcome
from flows.policy import LegalBasis, Policy, Purpose
from storage import (
    access,
    calls,
    chain,
    checkpoints,
    ingest,
    queries,
    reconcile,
    reports,
    sweep,
    verify,
)
from storage import withdrawal as withdrawals
from storage.blobs import RECORDINGS_DIR, LocalBlobs
from storage.datadir import EXPORTS_DIR, default_controller_id
from storage.ports import (
    AccessRecord,
    AuditEntry,
    CallbackCandidates,
    CallbackDue,
    CallFilter,
    CallListRow,
    CallRow,
    CallStart,
    CallStory,
    ClaimCheck,
    DecisionRecord,
    ExportCopy,
    LedgerDb,
    Progress,
    ReconcileReport,
    RecordingRow,
    Report,
    SweepReport,
    VerifyReport,
    WithdrawalReport,
    WithdrawalRow,
    WithdrawalVia,
)
from storage.rows import Context


class Store:
    """`storage.ports.Ledger`, `RecordingStore` and `Queries` over a `Context`."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.created = False  # made by the `open` that returned it

    @classmethod
    async def on_local_files(
        cls,
        db: LedgerDb,
        root: Path,
        policy: Policy,
        key: bytes,
        *,
        spool_dir: Path | None,
        controller_id: str | None,
        created: bool,
    ) -> Self:
        """A store of `db` whose audio, keys and checkpoints are files under `root`: what
        every ledger backend opens today. `db` is closed when the audit keys cannot be."""
        try:
            audit_keys = await asyncio.to_thread(chain.load_keys, root)
        except BaseException:
            await db.close()
            raise
        store = cls(
            Context(
                db=db,
                blobs=LocalBlobs(root),
                policy=policy,
                key=key,
                audit_keys=audit_keys,
                data_dir=root,
                checkpoints_dir=root / checkpoints.CHECKPOINTS_DIR,
                spool_dir=spool_dir,
                controller_id=controller_id or default_controller_id(root),
            )
        )
        store.created = created
        return store

    @property
    def policy(self) -> Policy:
        return self.ctx.policy

    @property
    def data_dir(self) -> Path:
        return self.ctx.data_dir

    @property
    def recordings_dir(self) -> Path:
        return self.data_dir / RECORDINGS_DIR

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / EXPORTS_DIR

    @property
    def spool_dir(self) -> Path | None:
        return self.ctx.spool_dir

    @property
    def checkpoints_dir(self) -> Path:
        return self.ctx.checkpoints_dir

    async def close(self) -> None:
        await self.ctx.db.close()

    async def claim_controller(self) -> None:
        await self.ctx.db.claim_controller(self.ctx.controller_id)

    async def keep_claim(self) -> ClaimCheck:
        return await self.ctx.db.check_claim()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------- a live call

    async def start_call(self, call: CallStart, *, lazy: bool = False) -> None:
        await calls.start_call(self.ctx, call, lazy=lazy)

    async def commit_decision(self, record: DecisionRecord, start: CallStart | None = None) -> None:
        await calls.commit_decision(self.ctx, record, start)

    async def set_recording_file(self, call_id: str, path: str) -> None:
        await calls.set_recording_file(self.ctx, call_id, path)

    async def mark_unrecorded(self, call_id: str, reason: str, at: datetime) -> bool:
        return await calls.mark_unrecorded(self.ctx, call_id, reason, at)

    async def end_call(
        self,
        call_id: str,
        ended_at: datetime,
        outcome: Outcome,
        agent: str | None = None,
        *,
        lazy: bool = False,
    ) -> CallRow:
        return await calls.end_call(self.ctx, call_id, ended_at, outcome, agent, lazy=lazy)

    async def close_stale_calls(self, started_before: datetime, now: datetime) -> list[str]:
        return await calls.close_stale_calls(self.ctx, started_before, now)

    async def callback_candidates(
        self, customer: str, since: datetime, legal_basis: LegalBasis
    ) -> CallbackCandidates:
        return await calls.callback_candidates(self.ctx, customer, since, legal_basis)

    async def overload(self) -> bool:
        return await calls.overload(self.ctx)

    async def set_overload(self, on: bool, by: str, now: datetime) -> None:
        await calls.set_overload(self.ctx, on, by, now)

    async def mark_serving(self, now: datetime, by: str) -> None:
        await calls.mark_serving(self.ctx, now, by)

    async def serving_since(self) -> datetime | None:
        return await calls.serving_since(self.ctx)

    async def get_call(self, call_id: str) -> CallRow | None:
        return await calls.get_call(self.ctx, call_id)

    async def open_calls(self) -> list[CallRow]:
        return await calls.open_calls(self.ctx)

    async def has_stored_audio(self, call_id: str) -> bool:
        return await calls.has_stored_audio(self.ctx, call_id)

    # ------------------------------------------------- recordings and the DPO

    async def ingest(
        self, call_id: str, source: Path, now: datetime, *, lazy: bool = False
    ) -> RecordingRow | None:
        return await ingest.ingest(self.ctx, call_id, source, now, lazy=lazy)

    async def sweep(
        self,
        now: datetime,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
        on_deleted: Callable[[Sequence[str]], None] | None = None,
    ) -> SweepReport:
        return await sweep.sweep(
            self.ctx, now, dry_run=dry_run, progress=progress, on_deleted=on_deleted
        )

    async def withdraw(
        self,
        caller: str | None,
        via: WithdrawalVia,
        received_at: datetime,
        registered_by: str,
        now: datetime,
        *,
        call_id: str | None = None,
        recording_id: str | None = None,
    ) -> WithdrawalReport:
        return await withdrawals.withdraw(
            self.ctx, caller, via, received_at, registered_by, now,
            call_id=call_id, recording_id=recording_id,
        )  # fmt: skip

    async def withdrawals(self) -> list[WithdrawalRow]:
        return await withdrawals.withdrawals(self.ctx)

    async def access(self, recording_id: str, purpose: Purpose, who: str, now: datetime) -> Path:
        return await access.access(self.ctx, recording_id, purpose, who, now)

    async def export(
        self,
        recording_ids: list[str],
        dest: Path,
        purpose: Purpose,
        who: str,
        now: datetime,
        *,
        progress: Progress | None = None,
    ) -> Path:
        return await access.export(
            self.ctx, recording_ids, dest, purpose, who, now, progress=progress
        )

    async def verify(
        self,
        *,
        progress: Progress | None = None,
        checkpoint_file: Path | None = None,
        now: datetime | None = None,
    ) -> VerifyReport:
        return await verify.verify(
            self.ctx, progress=progress, checkpoint_file=checkpoint_file, now=now
        )

    async def reconcile(
        self,
        spool: Path,
        now: datetime,
        *,
        longest_call: timedelta | None = None,
        finished: Callable[[Path], bool] | None = None,
    ) -> ReconcileReport:
        return await reconcile.reconcile(
            self.ctx, spool, now, longest_call=longest_call, finished=finished
        )

    # ------------------------------------------------------ the audit's proof

    async def audit_head(self) -> tuple[int, str]:
        return await self.ctx.audit_head()

    async def checkpoint(self, now: datetime) -> checkpoints.Checkpoint:
        return await self.ctx.checkpoint(now)

    def checkpoint_public_key(self) -> bytes:
        """The key that checks this store's checkpoints (PEM), for whoever checks them."""
        return checkpoints.public_pem(self.ctx.audit_keys.signing)

    # ---------------------------------------------------------------- queries

    async def recordings(self, *, include_deleted: bool = False) -> list[RecordingRow]:
        return await reports.recordings(self.ctx, include_deleted=include_deleted)

    async def recording(self, recording_id: str) -> RecordingRow | None:
        return await self.ctx.get_recording(recording_id)

    async def audit_entries(self, subject: str | None = None) -> list[AuditEntry]:
        return await self.ctx.audit_entries(subject)

    async def access_log(self, recording_id: str | None = None) -> list[AccessRecord]:
        return await reports.access_log(self.ctx, recording_id)

    async def exports(self, recording_id: str | None = None) -> list[ExportCopy]:
        return await queries.exports(self.ctx, recording_id)

    async def calls(self, where: CallFilter) -> list[CallListRow]:
        return await queries.list_calls(self.ctx, where)

    async def call_story(self, call_id: str) -> CallStory | None:
        return await queries.call_story(self.ctx, call_id)

    async def resolve_id(self, kind: str, text: str) -> str:
        return await queries.resolve_id(self.ctx, kind, text)

    async def callbacks_due(self, now: datetime) -> list[CallbackDue]:
        return await reports.callbacks_due(self.ctx, now)

    async def report(self, start: datetime, end: datetime) -> Report:
        return await reports.report(self.ctx, start, end)
