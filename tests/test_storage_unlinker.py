"""`files.Unlinker`: the sweep's way of removing many files from few directories."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest

from storage import files


def _make(path: Path, data: bytes = b"RIFF") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_removes_files_in_several_directories_and_reports_what_was_there(tmp_path: Path) -> None:
    day1 = [_make(tmp_path / "2025" / "01" / "01" / f"{k}.wav") for k in range(3)]
    day2 = [_make(tmp_path / "2025" / "01" / "02" / f"{k}.wav") for k in range(2)]
    keep = _make(tmp_path / "2025" / "01" / "01" / "keep.wav")
    with files.Unlinker() as unlinker:
        assert all(unlinker.unlink(path) for path in day1 + day2)
        assert unlinker.touched == {str(day1[0].parent), str(day2[0].parent)}
        unlinker.sync()
    assert not any(path.exists() for path in day1 + day2)
    assert keep.read_bytes() == b"RIFF"


def test_a_file_or_directory_already_gone_is_false_not_an_error(tmp_path: Path) -> None:
    present = _make(tmp_path / "a" / "x.wav")
    with files.Unlinker() as unlinker:
        assert unlinker.unlink(tmp_path / "a" / "missing.wav") is False
        assert unlinker.unlink(tmp_path / "no-such-dir" / "x.wav") is False
        assert unlinker.unlink(present / "under-a-file.wav") is False  # ENOTDIR
        assert unlinker.unlink(present) is True
        assert unlinker.unlink(present) is False
        # Existing directories are fsync'd even for a name already gone: whoever removed it
        # may not have made that durable. Missing ones cannot be.
        assert unlinker.touched == {str(present.parent), str(tmp_path / "a")}
        unlinker.sync()


def test_a_name_that_cannot_be_removed_raises_and_leaves_it(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "subdir.wav"
    directory.mkdir(parents=True)
    with files.Unlinker() as unlinker, pytest.raises(OSError):
        unlinker.unlink(directory)  # a directory is not unlinked
    assert directory.is_dir()


def test_directory_descriptors_are_few_and_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many directories a batch touches (one export folder per export), only
    OPEN_DIRS stay open; each one closed early was fsync'd first, and all are closed at the
    end."""
    many = files.Unlinker.OPEN_DIRS * 3
    paths = [_make(tmp_path / f"d{k}" / "x.wav") for k in range(many)]
    before = len(os.listdir("/proc/self/fd"))
    synced: list[int] = []
    real_fsync = os.fsync
    with files.Unlinker() as unlinker:

        def fsync(fd: int) -> None:
            synced.append(fd)
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        for path in paths:
            assert unlinker.unlink(path)
            assert len(os.listdir("/proc/self/fd")) <= before + files.Unlinker.OPEN_DIRS
        early = len(synced)
        unlinker.sync()
        monkeypatch.undo()
        assert early == many - files.Unlinker.OPEN_DIRS
        assert len(synced) == many  # every directory that lost a name, once
    assert len(os.listdir("/proc/self/fd")) == before
    assert not any(path.exists() for path in paths)


def test_a_removed_directory_hands_its_fsync_to_its_parent(tmp_path: Path) -> None:
    export = tmp_path / "exports" / "callrec-export-1"
    copy = _make(export / "x.wav")
    with files.Unlinker() as unlinker:
        assert unlinker.unlink(copy)
        export.rmdir()
        unlinker.removed_dir(str(export))
        assert unlinker.touched == {str(export.parent)}
        unlinker.sync()


def test_a_bare_name_is_taken_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bare.wav").write_bytes(b"RIFF")
    with files.Unlinker() as unlinker:
        assert unlinker.unlink("bare.wav") is True
        assert unlinker.unlink("bare.wav") is False
        unlinker.sync()
    assert not (tmp_path / "bare.wav").exists()


def test_many_at_once_reports_each_path_in_its_own_place(tmp_path: Path) -> None:
    """`unlink_many` removes on several threads; each outcome still belongs to its path."""
    present = [_make(tmp_path / "2025" / "01" / f"{k % 3:02d}" / f"{k}.wav") for k in range(40)]
    missing = tmp_path / "2025" / "01" / "00" / "missing.wav"
    in_no_dir = tmp_path / "2024" / "12" / "31" / "x.wav"
    a_directory = tmp_path / "2025" / "01" / "01" / "subdir.wav"
    a_directory.mkdir()
    loop = tmp_path / "2025" / "01" / "loop"
    loop.symlink_to("loop")  # a directory that cannot be opened: ELOOP
    keep = _make(tmp_path / "2025" / "01" / "00" / "keep.wav")
    paths = [str(p) for p in present[:20]]
    paths += [str(missing), str(a_directory), str(in_no_dir), str(loop / "x.wav")]
    paths += [str(p) for p in present[20:]]
    with files.Unlinker() as unlinker:
        outcomes = unlinker.unlink_many(paths)
        unlinker.sync()
        assert unlinker.touched == {str(present[k].parent) for k in range(3)}
    assert outcomes[:20] == [True] * 20
    assert outcomes[20] is False
    assert isinstance(outcomes[21], OSError)  # a directory is not unlinked: kept, reported
    assert outcomes[22] is False
    assert isinstance(outcomes[23], OSError) and outcomes[23].errno == errno.ELOOP
    assert outcomes[24:] == [True] * 20
    assert not any(path.exists() for path in present)
    assert a_directory.is_dir()
    assert keep.read_bytes() == b"RIFF"


def test_many_at_once_across_more_directories_than_may_stay_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No directory is closed under a removal still to use it: with more directories than
    OPEN_DIRS, the removals queued so far are finished before the oldest is closed."""
    monkeypatch.setattr(files.Unlinker, "OPEN_DIRS", 4)
    paths = [_make(tmp_path / f"d{k % 11}" / f"{k}.wav") for k in range(200)]
    before = len(os.listdir("/proc/self/fd"))
    # Each directory's last fsync must come after its last removal: watch both, by the
    # directory each descriptor is open on.
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    real_unlink, real_fsync = os.unlink, os.fsync

    def unlink(name: str, *, dir_fd: int) -> None:
        real_unlink(name, dir_fd=dir_fd)
        with lock:
            events.append(("unlink", os.readlink(f"/proc/self/fd/{dir_fd}")))

    def fsync(fd: int) -> None:
        real_fsync(fd)
        with lock:
            events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "fsync", fsync)
    with files.Unlinker() as unlinker:
        outcomes = unlinker.unlink_many([str(p) for p in paths])
        unlinker.sync()
    monkeypatch.undo()
    assert outcomes == [True] * len(paths)
    assert not any(path.exists() for path in paths)
    assert len(os.listdir("/proc/self/fd")) == before
    for directory in {str(path.parent) for path in paths}:
        last = {kind: n for n, (kind, where) in enumerate(events) if where == directory}
        assert last["fsync"] > last["unlink"], directory


def test_many_at_once_when_no_thread_can_be_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a task limit `Thread.start` fails; the calling thread then removes those shares
    itself, and every file still goes."""
    paths = [_make(tmp_path / "d" / f"{k}.wav") for k in range(40)]
    real_start = threading.Thread.start
    starts: list[int] = []

    def start(self: threading.Thread) -> None:
        starts.append(1)
        if len(starts) % 2 == 0:
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    with files.Unlinker() as unlinker:
        outcomes = unlinker.unlink_many([str(p) for p in paths])
        unlinker.sync()
    assert len(starts) == files.UNLINK_WORKERS - 1  # the calling thread is the other one
    assert outcomes == [True] * len(paths)
    assert not any(path.exists() for path in paths)


def test_many_at_once_raises_only_once_every_removal_has_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected failure in one removal thread is raised only after the others are done:
    the directories they use are closed right after."""
    paths = [_make(tmp_path / "d" / f"{k}.wav") for k in range(files.UNLINK_WORKERS * 3)]
    real_unlink = os.unlink
    ended: list[str] = []

    def unlink(name: str, *, dir_fd: int) -> None:
        if name == "0.wav":
            raise RuntimeError("broken")
        time.sleep(0.05)
        real_unlink(name, dir_fd=dir_fd)
        ended.append(name)

    monkeypatch.setattr(os, "unlink", unlink)
    with files.Unlinker() as unlinker, pytest.raises(RuntimeError, match="broken"):
        unlinker.unlink_many([str(p) for p in paths])
    ended_by_then = len(ended)
    time.sleep(0.3)
    assert len(ended) == ended_by_then  # nothing still running on a closed directory
    assert ended_by_then >= len(paths) - 3  # the other threads finished their shares
