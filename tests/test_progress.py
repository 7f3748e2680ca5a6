"""The progress bar of the long commands, and the progress the store reports to it."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

from storage_helpers import T0, record_call

from callrec.progress import ProgressBar
from flows.policy import Policy
from storage.sqlite import SqliteStore


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_is_drawn_on_a_terminal_and_ends_its_line() -> None:
    """On a terminal the bar shows done/total and ends with a newline when done."""
    out = Terminal()
    with ProgressBar("sweep", out, interval=0.0) as bar:
        for done in range(11):
            bar(done, 10)
    text = out.getvalue()
    assert text.endswith("sweep [" + "#" * 30 + "] 10/10\n")
    assert "\rsweep [" + "#" * 15 + "." * 15 + "] 5/10" in text


def test_nothing_is_drawn_into_a_pipe() -> None:
    """A log file or a pipe gets no bar at all."""
    out = io.StringIO()
    with ProgressBar("verify", out, interval=0.0) as bar:
        bar(1, 2)
        bar(2, 2)
    assert out.getvalue() == ""


def test_an_interrupted_bar_leaves_a_clean_line() -> None:
    """An error while the bar is half drawn: the next line starts on its own line."""
    out = Terminal()
    try:
        with ProgressBar("export", out, interval=0.0) as bar:
            bar(1, 3)
            raise RuntimeError("disk gone")
    except RuntimeError:
        pass
    assert out.getvalue().endswith("] 1/3\n")


async def test_sweep_and_verify_report_their_progress_to_the_end(tmp_path: Path) -> None:
    """The sweep counts what is due and reports up to it; verify reports every item it checks."""
    spool = tmp_path / "spool"
    spool.mkdir()
    store = await SqliteStore.open(tmp_path / "data", Policy(), create=True)
    try:
        due = None
        for n in range(3):
            call_id, source = await record_call(store, spool, at=T0 + timedelta(minutes=n))
            row = await store.ingest(call_id, source, T0 + timedelta(minutes=n))
            assert row is not None
            due = row.delete_after
        assert due is not None
        checked: list[tuple[int, int]] = []
        report = await store.verify(progress=lambda done, total: checked.append((done, total)))
        assert checked[0] == (0, report.checked) and checked[-1] == (report.checked,) * 2
        swept: list[tuple[int, int]] = []
        result = await store.sweep(due, progress=lambda done, total: swept.append((done, total)))
        assert len(result.deleted) == 3
        assert swept[0] == (0, 3) and swept[-1] == (3, 3)
        assert [done for done, _ in swept] == sorted(done for done, _ in swept)
    finally:
        await store.close()
