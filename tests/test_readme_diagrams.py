"""The README's diagrams are the flows' transition tables, printed: never drawn by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from callrec.diagrams import BEGIN, END, main, section, shown_in
from flows import callbacks, consent
from flows.machine import label

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_shows_the_tables_as_they_are() -> None:
    """The README's diagram section is exactly what the tables print now."""
    assert shown_in(README.read_text(encoding="utf-8")) == section()


@pytest.mark.parametrize("table", [consent.TRANSITIONS, callbacks.TRANSITIONS])
def test_every_row_that_does_something_is_an_edge_in_the_readme(table: object) -> None:
    """Each row that moves the flow or runs an action is drawn, PromptFailed included."""
    text = README.read_text(encoding="utf-8")
    assert isinstance(table, dict)
    for state, rows in table.items():
        for trigger, row in rows.items():
            if row.next != state or row.action is not None:
                edge = f"{state.name} --> {row.next.name}: {label(trigger)}"
                assert edge in text, edge
    assert "HEARING_QUESTION --> COMMITTING: PromptFailed" in text


def test_check_fails_on_a_stale_readme_and_update_mends_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--check` exits 1 when a drawn edge is not the table's; `--update` redraws it."""
    stale = tmp_path / "README.md"
    text = README.read_text(encoding="utf-8")
    stale.write_text(text.replace(": PromptFailed\n", ": PromptFinished\n"), encoding="utf-8")
    assert main(["--check", str(stale)]) == 1
    assert "differ" in capsys.readouterr().err
    assert main(["--update", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == text
    assert main(["--check", str(stale)]) == 0


def test_a_readme_without_the_markers_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No section to check or rewrite: exit 2 with one line naming the markers."""
    bare = tmp_path / "README.md"
    bare.write_text("# nothing here\n", encoding="utf-8")
    assert main(["--update", str(bare)]) == 2
    err = capsys.readouterr().err
    assert BEGIN in err and END in err and len(err.splitlines()) == 1
    assert bare.read_text(encoding="utf-8") == "# nothing here\n"
