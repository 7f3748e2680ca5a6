"""Hostile or careless settings and arguments end in one clear line and exit 2, through the
real `callrec` command: never a traceback, never a half-done command."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
from cli_helpers import callrec

OLDEST = "0001-01-01T00:00:00+00:00"
NEWEST = "9999-12-31T23:59:59+00:00"
WITHDRAW = ["withdraw", "--caller", "041 555 101", "--via", "phone", "--by", "dpo"]

CONFIGS = [
    pytest.param("[storage]\ndata_dir = 5\n", "storage.data_dir", id="data_dir-int"),
    pytest.param('[storage]\ndata_dir = "a\\u0000b"\n', "NUL", id="data_dir-nul"),
    pytest.param('[storage]\nspool_dir = "/tmp/a\\u0000b"\n', "NUL", id="spool_dir-nul"),
    pytest.param('[ari]\npassword_file = "x\\u0000y"\n', "NUL", id="password_file-nul"),
    pytest.param('[ari]\npassword_file = "PW"\n', "not UTF-8", id="password-not-utf8"),
    pytest.param('[storage]\nspool_mode = "0777"\n', "storage.spool_mode", id="spool_mode-world"),
    pytest.param('[storage]\nspool_mode = "rwx"\n', "storage.spool_mode", id="spool_mode-text"),
]


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def audit_rows(data_dir: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(data_dir / "ledger.sqlite3") as raw:
        return raw.execute("SELECT * FROM audit ORDER BY seq").fetchall()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("input") / "store"
    callrec("init", data_dir=data_dir)
    return data_dir


@pytest.mark.parametrize(("text", "message"), CONFIGS)
def test_a_broken_config_value_is_one_line(
    store: Path, tmp_path: Path, text: str, message: str
) -> None:
    """A config value of the wrong type, a path with a NUL, a password file that is not
    UTF-8 or a world-open spool mode: exit 2 and one line naming it."""
    (tmp_path / "PW").write_bytes(b"\xff\xfe secret\n")
    config = tmp_path / "c.toml"
    config.write_text(text.replace('"PW"', f'"{tmp_path / "PW"}"'))
    env = {"CALLREC_DATA_DIR": ""} if "data_dir" in text else {}
    result = callrec("recordings", "list", data_dir=store, config=config, env=env, check=False)
    assert message in one_line_error(result)


def test_a_config_file_that_is_not_utf8_is_one_line(store: Path, tmp_path: Path) -> None:
    """A config file of bytes that are not UTF-8 text: exit 2, one line naming the file."""
    config = tmp_path / "c.toml"
    config.write_bytes(b"\xff\xfe = 1\n")
    result = callrec("recordings", "list", data_dir=store, config=config, check=False)
    assert str(config) in one_line_error(result)


@pytest.mark.parametrize(
    "args",
    [
        ["sweep", "--now", OLDEST],
        ["sweep", "--now", NEWEST],
        ["sweep", "--dry-run", "--now", "9999-12-31T23:59:59-01:00"],
        ["callbacks", "--now", OLDEST],
        ["callbacks", "--now", NEWEST],
        [*WITHDRAW, "--now", OLDEST],
        [*WITHDRAW, "--now", NEWEST],
        [*WITHDRAW, "--received-at", "0001-01-01T00:00:00+01:00"],
        ["report", "--from", OLDEST, "--to", NEWEST],
    ],
    ids=lambda a: " ".join(a),
)
def test_a_time_outside_what_callrec_keeps_is_one_line(store: Path, args: list[str]) -> None:
    """--now, --received-at, --from or --to at the ends of the calendar: exit 2, one line
    naming the option, and nothing written."""
    before = audit_rows(store)
    line = one_line_error(callrec(*args, data_dir=store, check=False))
    option = next(args[i - 1] for i, a in enumerate(args) if a[:4] in ("0001", "9999"))
    assert line.startswith(f"callrec: {option}: ") and "outside" in line
    assert audit_rows(store) == before


@pytest.mark.parametrize("args", [["recordings", "list"], ["sweep"]], ids=" ".join)
def test_an_mqtt_url_that_cannot_be_parsed_is_one_line(store: Path, args: list[str]) -> None:
    """CALLREC_MQTT_URL='mqtt://[::1' is refused in one line naming mqtt.url."""
    env = {"CALLREC_MQTT_URL": "mqtt://[::1"}
    line = one_line_error(callrec(*args, data_dir=store, env=env, check=False))
    assert "mqtt.url" in line
