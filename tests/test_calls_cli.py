"""`callrec calls list|show`, `recordings show|access-log`, short ids and the one rule for
times, through the real command on a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cli_helpers import callrec
from storage_helpers import ALICE, BOB, POLICY, T0, record_call
from storage_helpers import open_store as open_test_store

from flows.outcome import Outcome
from flows.policy import Decision, Direction, Purpose
from storage.ports import CallStart
from storage.sqlite import SqliteStore

LIST_FIELDS = {
    "call_id",
    "uniqueid",
    "direction",
    "line",
    "caller",
    "dialed",
    "started_at",
    "ended_at",
    "decision",
    "legal_basis",
    "digit",
    "outcome",
    "agent",
    "recording_id",
    "recording_status",
    "linked_to",
}
LOCAL_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d\d:\d\d")


@dataclass(frozen=True)
class Ledger:
    data_dir: Path
    recorded: str  # Alice's call: recorded, accessed, exported, then withdrawn
    recording: str
    refused: str  # Bob's: he pressed 2, nothing recorded
    missed: str  # Bob's on sales, missed
    twins: tuple[str, str]  # two calls whose ids share their first 8 digits


async def _fill(data_dir: Path, spool: Path) -> Ledger:
    store: SqliteStore = await open_test_store(data_dir, POLICY, spool_dir=spool, create=True)  # type: ignore[assignment]
    try:
        recorded, path = await record_call(store, spool, at=T0, caller=ALICE, end=False)
        await store.end_call(recorded, T0 + timedelta(minutes=3), Outcome.ANSWERED, "PJSIP/1001")
        row = await store.ingest(recorded, path, T0 + timedelta(minutes=4))
        assert row is not None
        await store.access(row.id, Purpose.QUALITY, "qa-lead", T0 + timedelta(minutes=10))
        await store.export(
            [row.id], data_dir.parent / "out", Purpose.EVIDENCE, "dpo", T0 + timedelta(hours=1)
        )
        refused, _ = await record_call(
            store,
            spool,
            at=T0 + timedelta(hours=2),
            caller=BOB,
            decision=Decision.REFUSE,
            end=False,
        )
        await store.end_call(
            refused, T0 + timedelta(hours=2, minutes=3), Outcome.ANSWERED, "PJSIP/1002"
        )
        missed, _ = await record_call(
            store,
            spool,
            at=T0 + timedelta(hours=3),
            caller=BOB,
            line="sales",
            decision=Decision.NONE,
            outcome=Outcome.MISSED,
        )
        twins = ("fedcba98" + "1" * 24, "fedcba98" + "2" * 24)
        for twin in twins:
            await store.start_call(
                CallStart(
                    call_id=twin,
                    channel_id=twin[-4:],
                    direction=Direction.INBOUND,
                    line="service",
                    caller=None,
                    dialed=None,
                    started_at=T0 - timedelta(days=1),
                )
            )
        return Ledger(data_dir, recorded, row.id, refused, missed, twins)
    finally:
        await store.close()


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Ledger:
    root = tmp_path_factory.mktemp("calls")
    spool = root / "spool"
    spool.mkdir()
    return asyncio.run(_fill(root / "store", spool))


def run_json(ledger: Ledger, *args: str) -> object:
    return json.loads(callrec(*args, "--json", data_dir=ledger.data_dir).stdout)


def ids(ledger: Ledger, *args: str) -> list[str]:
    rows = run_json(ledger, "calls", "list", *args)
    assert isinstance(rows, list)
    return [row["call_id"] for row in rows]


def one_line_error(ledger: Ledger, *args: str) -> str:
    result = callrec(*args, data_dir=ledger.data_dir, check=False)
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_calls_list_shows_refused_and_unrecorded_calls_with_stable_fields(ledger: Ledger) -> None:
    """Every call is listed, newest first, refused and unrecorded ones too, each with the
    documented JSON fields."""
    rows = run_json(ledger, "calls", "list")
    assert isinstance(rows, list)
    assert [r["call_id"] for r in rows[:3]] == [ledger.missed, ledger.refused, ledger.recorded]
    assert all(set(r) == LIST_FIELDS for r in rows)
    by_id = {r["call_id"]: r for r in rows}
    assert by_id[ledger.refused]["decision"] == "refuse"
    assert by_id[ledger.refused]["recording_id"] is None
    assert by_id[ledger.recorded]["recording_id"] == ledger.recording
    assert by_id[ledger.recorded]["uniqueid"] == f"{T0.timestamp():.3f}"
    text = callrec("calls", "list", data_dir=ledger.data_dir).stdout
    assert ledger.refused[:8] in text and "refuse" in text and "PJSIP/1002" in text


def test_calls_list_filters_by_caller_time_line_decision_outcome_and_agent(ledger: Ledger) -> None:
    """Each filter keeps the calls it names; a caller in a local format finds the E.164 one."""
    assert ids(ledger, "--caller", "041 222 222") == [ledger.missed, ledger.refused]
    assert ids(ledger, "--caller", "+386 41 111 111") == [ledger.recorded]
    assert ids(ledger, "--line", "sales") == [ledger.missed]
    assert ids(ledger, "--decision", "refuse") == [ledger.refused]
    assert ids(ledger, "--outcome", "missed") == [ledger.missed]
    assert ids(ledger, "--agent", "PJSIP/1001") == [ledger.recorded]
    start = (T0 + timedelta(hours=1)).isoformat()
    end = (T0 + timedelta(hours=3)).isoformat()
    assert ids(ledger, "--from", start, "--to", end) == [ledger.refused]
    assert ids(ledger, "--limit", "1") == [ledger.missed]


def test_a_reversed_range_lists_nothing_and_succeeds(ledger: Ledger) -> None:
    """--from after --to is an empty period: no calls, an empty report, exit 0."""
    later, earlier = (T0 + timedelta(days=1)).isoformat(), T0.isoformat()
    assert ids(ledger, "--from", later, "--to", earlier) == []
    report = run_json(ledger, "report", "--from", later, "--to", earlier)
    assert isinstance(report, dict)
    assert report["calls"] == [] and report["answered"] == 0 and report["withdrawals"] == []


def test_a_caller_filter_that_is_not_a_number_is_refused(ledger: Ledger) -> None:
    """A caller that is no phone number is one clear error, and reaches no SQL."""
    assert "not a phone number" in one_line_error(
        ledger, "calls", "list", "--caller", "'; DROP TABLE calls; --"
    )
    assert len(ids(ledger)) == 5


def test_calls_show_tells_the_story_in_time_order(ledger: Ledger) -> None:
    """The recorded call's timeline runs from entering to its export, each step once and
    in time order, with the agent and Asterisk's uniqueid."""
    story = run_json(ledger, "calls", "show", ledger.recorded[:8])
    assert isinstance(story, dict)
    assert story["call"]["call_id"] == ledger.recorded
    assert story["call"]["agent"] == "PJSIP/1001"
    assert story["call"]["uniqueid"] == f"{T0.timestamp():.3f}"
    events = [e["event"] for e in story["timeline"]]
    assert events == [
        "entered",
        "prompt",
        "key",
        "decision",
        "recording_started",
        "agent",
        "ended",
        "ingested",
        "access",
        "export",
    ]
    moments = [e["at"] for e in story["timeline"]]
    assert all(m.endswith("+00:00") for m in moments)
    assert moments == sorted(moments)
    text = callrec("calls", "show", ledger.recorded[:8], data_dir=ledger.data_dir).stdout
    assert "uniqueid" in text and "PJSIP/1001" in text
    assert "2025-03-03 10:00:00 +01:00  entered" in text
    assert "accessed by qa-lead for quality: allowed" in text


def test_calls_show_of_a_withdrawn_call_ends_with_its_deletion(tmp_path: Path) -> None:
    """After a withdrawal, the call's story shows it and the deletion it caused."""
    data_dir = tmp_path / "store"
    spool = tmp_path / "spool"
    spool.mkdir()
    filled = asyncio.run(_fill(data_dir, spool))
    callrec(
        "withdraw", "--call", filled.recorded[:8], "--via", "email", "--by", "dpo",
        "--now", (T0 + timedelta(days=1)).isoformat(), data_dir=data_dir,
    )  # fmt: skip
    story = run_json(filled, "calls", "show", filled.recorded)
    assert isinstance(story, dict)
    events = [e["event"] for e in story["timeline"]]
    assert events[-4:] == ["withdrawal", "withdrawal_completed", "export_copy_deleted", "deleted"]


def test_short_ids_are_accepted_wherever_an_id_is(ledger: Ledger) -> None:
    """The prefixes tables show work for calls show, recordings show, access-log and
    export; an ambiguous or unknown one is one clear line with exit 2."""
    short = ledger.recording[:16]
    shown = run_json(ledger, "recordings", "show", short)
    assert isinstance(shown, dict) and shown["recording"]["id"] == ledger.recording
    log = run_json(ledger, "recordings", "access-log", short)
    assert isinstance(log, dict) and [a["who"] for a in log["accesses"]] == ["qa-lead", "dpo"]
    out = ledger.data_dir.parent / "out-short"
    callrec(
        "recordings", "export", short, "--to", str(out), "--purpose", "evidence",
        "--by", "dpo", data_dir=ledger.data_dir,
    )  # fmt: skip
    [folder] = out.iterdir()
    assert (folder / f"{ledger.recording}.wav").is_file()
    assert "more than one call id" in one_line_error(ledger, "calls", "show", "fedcba98")
    assert run_json(ledger, "calls", "show", ledger.twins[1][:9])
    assert "no call id starts with 0000000" in one_line_error(ledger, "calls", "show", "0000000")
    assert "more than one call id" in one_line_error(
        ledger, "withdraw", "--call", "fedcba98", "--via", "email", "--by", "dpo"
    )


def test_recordings_show_reads_as_labelled_text(ledger: Ledger) -> None:
    """One labelled field a line, local times with their offset, then the audit, the access
    log and the exports; no Python values."""
    text = callrec("recordings", "show", ledger.recording[:16], data_dir=ledger.data_dir).stdout
    assert "LegalBasis" not in text and "frozenset" not in text and "datetime" not in text
    lines = text.splitlines()
    assert f"recording     {ledger.recording}" in lines
    assert "legal basis   consent" in lines
    assert "created       2025-03-03 10:00:12 +01:00" in lines
    assert "delete after  2025-09-03 10:00:12 +02:00" in lines
    assert "purposes      evidence, quality" in lines
    assert any("qa-lead" in line and "allowed" in line for line in lines)
    assert any("dpo" in line and "evidence" in line and "done" in line for line in lines)


def test_text_output_shows_local_time_with_offset_and_json_iso_with_offset(
    ledger: Ledger,
) -> None:
    """Every table and report shows Europe/Ljubljana times with their offset; JSON times
    carry an offset."""
    listed = callrec("recordings", "list", data_dir=ledger.data_dir).stdout
    assert "2025-03-03 10:00:12 +01:00" in listed
    report = callrec(
        "report", "--from", "2025-03-01T00:00:00+01:00", "--to", "2025-04-01T00:00:00+02:00",
        data_dir=ledger.data_dir,
    ).stdout  # fmt: skip
    assert "2025-03-01 00:00:00 +01:00 .. 2025-04-01 00:00:00 +02:00" in report
    now = (T0 + timedelta(hours=3, minutes=10)).isoformat()
    due = callrec("callbacks", "--now", now, data_dir=ledger.data_dir).stdout
    assert "2025-03-03 13:03:00 +01:00" in due
    sweep = callrec("sweep", "--dry-run", "--now", now, data_dir=ledger.data_dir).stdout
    assert sweep.startswith("sweep at 2025-03-03 13:10:00 +01:00:")
    for text in (listed, report, due, sweep):
        assert " UTC" not in text
        assert all(LOCAL_TIME.fullmatch(t) for t in LOCAL_TIME.findall(text))
    [row] = run_json(ledger, "recordings", "list")  # type: ignore[misc]
    assert row["created_at"] == "2025-03-03T09:00:12+00:00"


@pytest.mark.parametrize("option", ["--from", "--to"])
def test_a_plain_date_is_refused_naming_the_form_now_takes(ledger: Ledger, option: str) -> None:
    """`report --from 2026-03-01` is a date, not a moment: refused, naming --now's form."""
    times = {"--from": "2026-03-01T00:00:00+01:00", "--to": "2026-04-01T00:00:00+02:00"}
    times[option] = "2026-03-01"
    line = one_line_error(ledger, "report", "--from", times["--from"], "--to", times["--to"])
    assert option in line and "--now" in line and "2026-03-01T00:00:00+01:00" in line
    line = one_line_error(ledger, "calls", "list", option, "2026-03-01")
    assert "--now" in line
