"""The application's settings: file, environment overrides, secrets, clear errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from callrec.config import load_settings
from flows.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_example_config_equals_the_defaults_policy() -> None:
    """The annotated example loads and says what the built-in defaults say."""
    example = load_settings(ROOT / "callrec.example.toml", env={})
    default = load_settings(None, env={})
    assert example.policy.lines == default.policy.lines
    assert example.policy.retention_months == default.policy.retention_months == 6
    assert example.spool_dir == Path("/var/spool/asterisk/monitor/callrec")


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    """CALLREC_DATA_DIR and CALLREC_ARI_* win over the file, the same for every command."""
    config = tmp_path / "c.toml"
    config.write_text('[storage]\ndata_dir = "/nowhere"\n[ari]\nurl = "http://10.0.0.1/ari"\n')
    env = {
        "CALLREC_DATA_DIR": str(tmp_path / "d"),
        "CALLREC_ARI_URL": "http://127.0.0.1:1/ari",
        "CALLREC_ARI_PASSWORD": "s3cret",
    }
    settings = load_settings(config, env=env)
    assert settings.data_dir == tmp_path / "d"
    assert settings.spool_dir == tmp_path / "d" / "spool"
    assert settings.ari.url == "http://127.0.0.1:1/ari"
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[ari]\npassword = "x"\n', r"ari\.password: secrets are not kept"),
        ("[storage\n", "not valid TOML"),
        ("[nonsense]\nx = 1\n", "nonsense: unknown section"),
        ('[fastagi]\nallow = ["evil.example"]\n', "not an IP address"),
        ('[mqtt]\nurl = "http://x"\n', r"mqtt\.url: must start with mqtt://"),
        ("[policy]\nretention_months = 0\n", r"policy\.retention_months: must be between"),
    ],
)
def test_broken_config_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    """A broken file gives one ConfigError that names the key and the reason."""
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(config, env={})


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    """An explicit --config that does not exist is an error naming the file."""
    with pytest.raises(ConfigError, match="no such config file"):
        load_settings(tmp_path / "absent.toml", env={})


@pytest.mark.parametrize(
    ("text", "mode"),
    [("", 0o700), ('spool_mode = "2770"', 0o2770), ("spool_mode = 0o750", 0o750)],
)
def test_spool_mode_is_octal_text_or_a_toml_octal(tmp_path: Path, text: str, mode: int) -> None:
    """storage.spool_mode takes "2770" or 0o750, and defaults to the owner only."""
    config = tmp_path / "c.toml"
    config.write_text(f"[storage]\n{text}\n")
    assert load_settings(config, env={}).spool_mode == mode


@pytest.mark.parametrize(("text", "chosen"), [("", "wav"), ('recording_format = "wav16"', "wav16")])
def test_recording_format_is_wav_unless_wav16_is_chosen(
    tmp_path: Path, text: str, chosen: str
) -> None:
    """storage.recording_format is 8 kHz "wav" by default, or "wav16" for wideband calls."""
    config = tmp_path / "c.toml"
    config.write_text(f"[storage]\n{text}\n")
    assert load_settings(config, env={}).recording_format == chosen


@pytest.mark.parametrize("value", ['"mp3"', '"WAV"', '"wav;x"', "16"])
def test_an_unknown_recording_format_is_refused(tmp_path: Path, value: str) -> None:
    """A format MixMonitor would not write as WAV (or a file name trick) is a config error
    naming the key."""
    config = tmp_path / "c.toml"
    config.write_text(f"[storage]\nrecording_format = {value}\n")
    with pytest.raises(ConfigError, match=r"storage\.recording_format"):
        load_settings(config, env={})


@pytest.mark.parametrize("value", ['"0777"', '"0600"', '"4770"', "true", '"12345"', '"0o770"'])
def test_a_spool_mode_that_opens_the_spool_or_locks_out_its_owner_is_refused(
    tmp_path: Path, value: str
) -> None:
    """A spool mode giving others access, lacking the owner's rwx, with setuid, or not an
    octal mode is one ConfigError naming storage.spool_mode."""
    config = tmp_path / "c.toml"
    config.write_text(f"[storage]\nspool_mode = {value}\n")
    with pytest.raises(ConfigError, match=r"storage\.spool_mode"):
        load_settings(config, env={})


def test_longest_call_is_configurable_and_defaults_to_12_hours(tmp_path: Path) -> None:
    """storage.longest_call_hours bounds how long a call with no reported end stays open;
    the example and the default say 12 hours."""
    assert load_settings(None, env={}).longest_call == timedelta(hours=12)
    assert load_settings(ROOT / "callrec.example.toml", env={}).longest_call == timedelta(hours=12)
    config = tmp_path / "c.toml"
    config.write_text("[storage]\nlongest_call_hours = 4\n")
    assert load_settings(config, env={}).longest_call == timedelta(hours=4)


def test_lock_check_is_configurable_and_defaults_to_5_seconds(tmp_path: Path) -> None:
    """storage.lock_check_seconds sets how often a controller checks its id's lock; the
    example and the default say 5 seconds."""
    assert load_settings(None, env={}).lock_check_seconds == 5.0
    assert load_settings(ROOT / "callrec.example.toml", env={}).lock_check_seconds == 5.0
    config = tmp_path / "c.toml"
    config.write_text("[storage]\nlock_check_seconds = 0.5\n")
    assert load_settings(config, env={}).lock_check_seconds == 0.5


@pytest.mark.parametrize("value", ["0", "301", '"5"', "true"])
def test_a_bad_lock_check_is_refused(tmp_path: Path, value: str) -> None:
    """Zero, more than five minutes, or not a number: one error naming the key."""
    config = tmp_path / "c.toml"
    config.write_text(f"[storage]\nlock_check_seconds = {value}\n")
    with pytest.raises(ConfigError, match=r"storage\.lock_check_seconds"):
        load_settings(config, env={})


@pytest.mark.parametrize("value", ["0", "169", '"12"', "true"])
def test_a_bad_longest_call_is_refused(tmp_path: Path, value: str) -> None:
    """Too short (it would close live calls), too long, or not a number: a clear error."""
    config = tmp_path / "c.toml"
    config.write_text(f"[storage]\nlongest_call_hours = {value}\n")
    with pytest.raises(ConfigError, match=r"storage\.longest_call_hours"):
        load_settings(config, env={})


def test_ledger_url_names_postgresql_with_the_password_kept_out_of_the_file(
    tmp_path: Path,
) -> None:
    """storage.ledger_url picks PostgreSQL; its password comes from a file, never the TOML."""
    secret = tmp_path / "ledger.pw"
    secret.write_text("pg-s3cret\n")
    config = tmp_path / "c.toml"
    config.write_text(
        '[storage]\nledger_url = "postgresql://callrec@db.example/ledger"\n'
        f'ledger_password_file = "{secret}"\n'
    )
    settings = load_settings(config, env={})
    assert settings.ledger.backend == "postgresql"
    assert settings.ledger.url == "postgresql://callrec@db.example/ledger"
    assert settings.ledger.password == "pg-s3cret"
    assert "pg-s3cret" not in repr(settings)
    assert load_settings(None, env={}).ledger.backend == "sqlite"
    env = {"CALLREC_LEDGER_URL": "sqlite://"}
    assert load_settings(config, env=env).ledger.url is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://callrec:pw@db/ledger", "secrets are not kept in the config file"),
        ("mysql://db/ledger", "must start with sqlite:// or postgresql://"),
        ("postgresql://callrec@db", "name the database"),
        ("sqlite:///elsewhere/ledger.sqlite3", "always the data directory's"),
    ],
)
def test_bad_ledger_url_is_one_clear_error(tmp_path: Path, url: str, message: str) -> None:
    """A ledger URL with a password in the file, another engine or no database is refused."""
    config = tmp_path / "c.toml"
    config.write_text(f'[storage]\nledger_url = "{url}"\n')
    with pytest.raises(ConfigError, match=message) as raised:
        load_settings(config, env={})
    assert ":pw@" not in str(raised.value)
