"""The command line as operators and the DPO use it: real processes, a real store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORDING_FIELDS = {
    "id",
    "call_id",
    "line",
    "legal_basis",
    "caller",
    "dialed",
    "created_at",
    "delete_after",
    "sha256",
    "path",
    "linked_to",
    "purposes",
}


def callrec(*args: str, data_dir: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CALLREC_DATA_DIR": str(data_dir)}
    env.pop("CALLREC_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-m", "callrec.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=data_dir.parent,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"callrec {' '.join(args)} -> {result.returncode}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The demo's directory (every scenario of scenarios/ played once, each into its own
    store) and its JSON report."""
    data_dir = tmp_path_factory.mktemp("cli") / "store"
    result = callrec("demo", "--json", "--scale", "0.02", data_dir=data_dir)
    out = json.loads(result.stdout)
    assert all(s["passed"] for s in out["scenarios"]), [
        s["scenario"] for s in out["scenarios"] if not s["passed"]
    ]
    return data_dir, out


@pytest.fixture(scope="module")
def demo_store(demo_run: tuple[Path, dict[str, Any]]) -> Path:
    """The demo's directory of scenario stores."""
    return demo_run[0]


def test_each_demo_scenario_has_its_own_store(demo_run: tuple[Path, dict[str, Any]]) -> None:
    """Each scenario's store is `<demo dir>/<scenario file stem>`, holding only that
    scenario's recordings; a year-later sweep of one deletes nothing of another's."""
    data_dir, out = demo_run
    stores = {Path(s["data_dir"]) for s in out["scenarios"]}
    assert stores == {data_dir / Path(s["file"]).stem for s in out["scenarios"]}
    for store in stores:
        listed = json.loads(callrec("recordings", "list", "--json", "--all", data_dir=store).stdout)
        assert all(Path(r["path"]).is_relative_to(store) for r in listed if r["path"])
    callback_store = data_dir / "07-missed-with-1-callback-40min"
    before = json.loads(callrec("recordings", "list", "--json", data_dir=callback_store).stdout)
    assert any(r["status"] == "stored" for r in before)
    elsewhere = data_dir / "00-retention-31-august"
    callrec("sweep", "--now", "2030-01-01T00:00:00+00:00", data_dir=elsewhere)
    after = json.loads(callrec("recordings", "list", "--json", data_dir=callback_store).stdout)
    assert after == before


def test_recordings_list_json_has_the_contract_fields(demo_store: Path) -> None:
    """`recordings list --json` gives the fields other people's scripts rely on."""
    store = demo_store / "07-missed-with-1-callback-40min"
    rows = json.loads(callrec("recordings", "list", "--json", data_dir=store).stdout)
    assert rows, "the demo leaves recordings"
    for row in rows:
        assert row.keys() >= RECORDING_FIELDS
        assert row["legal_basis"] in ("zekom2-214-7", "consent")
        assert row["dialed"] is None or row["dialed"].startswith("+386")
    linked = [r for r in rows if r["linked_to"]]
    assert linked, "the callback recording names the missed call it answers"


def test_verify_passes_then_reports_one_changed_byte(demo_store: Path, tmp_path: Path) -> None:
    """verify is clean on the demo store and names a recording altered behind its back."""
    demo_store = demo_store / "02-service-press-1"
    assert callrec("recordings", "verify", data_dir=demo_store).returncode == 0
    rows = json.loads(callrec("recordings", "list", "--json", data_dir=demo_store).stdout)
    victim = next(r for r in rows if r["path"] and r["status"] == "stored")
    target = Path(victim["path"])
    original = target.read_bytes()
    try:
        changed = bytearray(original)
        changed[-1] ^= 0x01
        target.write_bytes(bytes(changed))
        result = callrec("recordings", "verify", "--json", data_dir=demo_store, check=False)
        assert result.returncode == 1
        problems = json.loads(result.stdout)["problems"]
        assert any(victim["id"] in p for p in problems), problems
    finally:
        target.write_bytes(original)


def test_sweep_dry_run_deletes_nothing(demo_store: Path) -> None:
    """A dry run far in the future lists everything due and deletes nothing."""
    demo_store = demo_store / "01-sales-call"
    before = json.loads(callrec("recordings", "list", "--json", data_dir=demo_store).stdout)
    out = json.loads(
        callrec(
            "sweep",
            "--dry-run",
            "--json",
            "--now",
            "2030-01-01T00:00:00+00:00",
            data_dir=demo_store,
        ).stdout
    )
    assert set(out["deleted"]) == {r["id"] for r in before}
    after = json.loads(callrec("recordings", "list", "--json", data_dir=demo_store).stdout)
    assert after == before


def test_withdraw_of_a_sales_only_caller_says_so(demo_store: Path) -> None:
    """A withdrawal that finds only sales recordings keeps them and says why."""
    result = callrec(
        "withdraw",
        "--caller",
        "041 555 101",
        "--via",
        "phone",
        "--by",
        "agent7",
        "--now",
        "2026-03-02T12:00:00+01:00",
        data_dir=demo_store / "01-sales-call",
    )
    assert "deleted 0 consent recording(s)" in result.stdout
    assert "kept" in result.stdout and "another legal basis" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["withdraw", "--caller", "../../etc/passwd", "--via", "email", "--by", "dpo"],
            "not a phone number",
        ),
        (["sweep", "--now", "yesterday"], "--now"),
        (
            ["withdraw", "--call", "../../x'; DROP", "--via", "phone", "--by", "agent7"],
            "not a call id",
        ),
        (["recordings", "show", "nope"], "no recording"),
    ],
)
def test_errors_are_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    """Bad input exits 2 with one line on stderr and no traceback."""
    callrec("init", data_dir=tmp_path / "store")
    result = callrec(*args, data_dir=tmp_path / "store", check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_withdraw_one_communication_by_its_recording(tmp_path: Path) -> None:
    """A caller found by time and line withdraws by the recording's id: it is deleted at
    once, with the deadline and the report of any withdrawal."""
    data_dir = tmp_path / "store"
    scenario = str(ROOT / "scenarios" / "02-service-press-1.yaml")
    callrec("replay", "--scale", "0.02", "--data-dir", str(data_dir), scenario, data_dir=data_dir)
    [recording] = json.loads(callrec("recordings", "list", "--json", data_dir=data_dir).stdout)
    out = json.loads(
        callrec(
            "withdraw",
            "--recording",
            recording["id"],
            "--via",
            "phone",
            "--by",
            "agent7",
            "--json",
            data_dir=data_dir,
        ).stdout
    )
    assert out["deleted"] == [recording["id"]]
    assert out["caller"] is None and out["communication_id"] == recording["call_id"]
    assert out["completed_at"] is not None
    after = json.loads(callrec("recordings", "list", "--json", "--all", data_dir=data_dir).stdout)
    assert [r["status"] for r in after] == ["deleted"]


def test_demo_as_the_readme_runs_it(tmp_path: Path) -> None:
    """`callrec demo` with no settings at all (what `make demo` runs) passes every case and
    names the directory it leaves its store in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
    result = subprocess.run(
        [sys.executable, "-m", "callrec.cli", "demo", "--scale", "0.02"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert re.search(r"\n(\d+) passed, 0 failed\n", result.stdout)
    left = next(tmp_path.glob("callrec-demo-*"))
    assert str(left) in result.stdout
    assert (left / "01-sales-call" / "ledger.sqlite3").exists()
    assert f"CALLREC_DATA_DIR={left / '00-retention-31-august'}" in result.stdout
