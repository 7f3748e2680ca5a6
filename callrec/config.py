"""The application's configuration: one frozen object, parsed once at the edge.

Sources, later ones winning: built-in defaults (equal to POLICY.md), the TOML file
(`--config`, else `$CALLREC_CONFIG`, else `./callrec.toml` when it exists), then the
environment overrides that every subcommand reads the same way (`CALLREC_DATA_DIR`,
`CALLREC_ARI_URL`, `CALLREC_ARI_USER`, `CALLREC_ARI_PASSWORD`, `CALLREC_MQTT_URL`,
`CALLREC_LEDGER_URL`, `CALLREC_LEDGER_PASSWORD`, `CALLREC_MONITOR_LISTEN`).
Secrets never come from the file itself: a `password` key is refused; name a
`password_file` or use the environment.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agi.collector import LONGEST_CALL
from flows.config import POLICY_SECTIONS, check_notices, policy_from_mapping
from flows.errors import ConfigError
from flows.numbers import NUMBER_FORMS
from flows.policy import Policy
from prompts.catalog import load_catalog, promises
from storage.datadir import CONTROLLER_ID
from storage.ledgers import LedgerConfig, check_url

DEFAULT_CONFIG = Path("callrec.toml")
DEFAULT_DATA_DIR = Path("callrec-data")  # relative to the working directory, like the config
DEFAULT_ARI_URL = "http://127.0.0.1:8088/ari"  # asterisk-conf/http.conf binds loopback
DEFAULT_APP = "callrec"  # the Stasis application the dialplan names
# REST requests in flight at once: a fifth of asterisk-conf/http.conf's `sessionlimit` (100),
# which the events socket, the CLI and other clients share (agi.ari says why; a test checks
# the two numbers against each other).
DEFAULT_ARI_MAX_CONNECTIONS = 20
DEFAULT_FASTAGI_PORT = 4573  # FastAGI's registered port
LOOPBACK = ("127.0.0.1", "::1")  # FastAGI has no authentication: loopback unless configured
# The spool's mode when callrec creates it: its owner only, unless the config lets
# Asterisk's group in (e.g. "2770": group-writable, new files keep the directory's group).
DEFAULT_SPOOL_MODE = 0o700
# MixMonitor picks the file format from the extension of the name the controller gives it
# (format_wav): "wav" is 8 kHz, "wav16" 16 kHz, which keeps G.722 (wideband) calls at the
# rate they were spoken. Both are RIFF WAV files; the store keeps them as .wav.
RECORDING_FORMATS = ("wav", "wav16")
SPOOL_MODE_BITS = 0o2770  # never any access for others, no setuid or sticky bit
DEFAULT_LONGEST_CALL_HOURS = LONGEST_CALL / timedelta(hours=1)  # see its reason there
# How often a controller checks that it still holds its id on the ledger (README "Scaling
# out"): a lost lock is taken again, or the controller stops, within about this long.
DEFAULT_LOCK_CHECK_SECONDS = 5.0

DEFAULT_MONITOR = "127.0.0.1:9464"  # 9464: the port Prometheus exporters of apps commonly use

APP_SECTIONS = ("storage", "ari", "mqtt", "fastagi", "monitor", "asterisk")
# The forms a trunk delivers the lines' numbers in (each becomes a DID of callrec-inbound),
# and the form callbacks show the line's caller ID in (what the operator's trunk accepts).
DEFAULT_DID_FORMS = ("national", "e164")
DEFAULT_CALLER_ID_FORM = "national"


@dataclass(frozen=True, slots=True)
class AriSettings:
    url: str = DEFAULT_ARI_URL
    user: str = "callrec"
    password: str = ""
    app: str = DEFAULT_APP
    max_connections: int = DEFAULT_ARI_MAX_CONNECTIONS
    shed_backlog: int | None = None  # None: agi.stasis's default (twice max_connections)
    shed_decision_lag_ms: int | None = None  # None: flows.shedding.DECISION_LAG_BOUND

    def __repr__(self) -> str:  # the password never reaches a log line
        return (
            f"AriSettings(url={self.url!r}, user={self.user!r}, app={self.app!r}, "
            f"max_connections={self.max_connections}, shed_backlog={self.shed_backlog}, "
            f"shed_decision_lag_ms={self.shed_decision_lag_ms})"
        )


@dataclass(frozen=True, slots=True)
class MqttSettings:
    url: str | None = None  # None: no broker, events are dropped
    prefix: str = "callrec"
    password_file: Path | None = None


@dataclass(frozen=True, slots=True)
class FastAgiSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_FASTAGI_PORT
    allow: tuple[str, ...] = LOOPBACK


@dataclass(frozen=True, slots=True)
class AsteriskSettings:
    """How callrec's Asterisk configuration writes numbers (`callrec asterisk install`)."""

    did_forms: tuple[str, ...] = DEFAULT_DID_FORMS
    caller_id_form: str = DEFAULT_CALLER_ID_FORM


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    """Where `serve` and `fastagi` answer /metrics and /healthz; None: nowhere."""

    listen: tuple[str, int] | None = ("127.0.0.1", 9464)


def _listen(value: object) -> tuple[str, int] | None:
    """`monitor.listen`: "host:port" ("[::1]:9464" for IPv6), or "" / false for off."""
    if value is False or value == "":
        return None
    where = "monitor.listen"
    if not isinstance(value, str):
        raise ConfigError(f'{where}: must be "host:port" or "" (off), got {value!r}')
    host, _, port_text = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
        port = int(port_text)
    except ValueError:
        raise ConfigError(
            f'{where}: must be "IP:port" such as "{DEFAULT_MONITOR}", or "" (off), got {value!r}'
        ) from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{where}: {port} is not a port number")
    return host, port


@dataclass(frozen=True, slots=True)
class Settings:
    policy: Policy
    data_dir: Path
    spool_dir: Path  # where MixMonitor writes (shared with Asterisk)
    ari: AriSettings
    mqtt: MqttSettings
    fastagi: FastAgiSettings
    source: str  # where the settings came from, for error messages and `serve`'s banner
    spool_mode: int = DEFAULT_SPOOL_MODE  # given to the spool directory when callrec creates it
    # A call open for longer had its end lost: it is closed and its recording stored.
    longest_call: timedelta = timedelta(hours=DEFAULT_LONGEST_CALL_HOURS)
    recording_format: str = "wav"  # one of RECORDING_FORMATS
    # Whose calls this controller settles after a restart; None: one of this host and data
    # directory (`storage.datadir.default_controller_id`).
    controller_id: str | None = None
    # Where the ledger is: the data directory's SQLite file by default.
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    # Seconds between the heartbeats of the controller id's lock on a shared ledger.
    lock_check_seconds: float = DEFAULT_LOCK_CHECK_SECONDS
    asterisk: AsteriskSettings = field(default_factory=AsteriskSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)


def _section(data: Mapping[str, Any], name: str, keys: set[str]) -> Mapping[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: must be a table")
    for key in value:
        if key == "password":
            where = "CALLREC_ARI_PASSWORD" if name == "ari" else "the CALLREC_MQTT_URL"
            raise ConfigError(
                f"{name}.password: secrets are not kept in the config file; set "
                f"{name}.password_file or {where} environment variable"
            )
        if key not in keys:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(sorted(keys))})")
    return value


def _str(section: Mapping[str, Any], where: str, key: str, default: str) -> str:
    value = section.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}: must be a non-empty string, got {value!r}")
    return value


def _count(section: Mapping[str, Any], where: str, key: str, default: int | None) -> int | None:
    value = section.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
        raise ConfigError(f"{where}.{key}: must be a whole number from 1 to 10000, got {value!r}")
    return value


def _path(value: object, where: str) -> Path:
    """A path from the file or the environment: text, not empty, no NUL (which no file
    name can hold, and which the OS would refuse with a traceback later)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a non-empty path, got {value!r}")
    if "\x00" in value:
        raise ConfigError(f"{where}: a path cannot hold a NUL character, got {value!r}")
    return Path(value)


def _spool_mode(value: object) -> int:
    """`storage.spool_mode`: octal text ("0770", "2770") or a TOML octal (0o770)."""
    mode: int | None = None
    if isinstance(value, str) and value.isdigit() and len(value) <= 5:
        mode = int(value, 8) if set(value) <= set("01234567") else None
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    if mode is None or mode & ~SPOOL_MODE_BITS or mode & 0o700 != 0o700:
        raise ConfigError(
            f'storage.spool_mode: must be an octal mode such as "0700" or "2770" that '
            f"gives the owner rwx and others nothing, got {value!r}"
        )
    return mode


def _read_secret(path: Path, where: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigError(f"{where}: cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path} is not UTF-8 text") from None


def _ledger(storage: Mapping[str, Any], env: Mapping[str, str]) -> LedgerConfig:
    """`storage.ledger_url` / `CALLREC_LEDGER_URL`, and its password from the environment or
    a file (never the config file itself)."""
    from_env = bool(env.get("CALLREC_LEDGER_URL"))
    url = env.get("CALLREC_LEDGER_URL") or storage.get("ledger_url")
    if url is None:
        return LedgerConfig()
    if not isinstance(url, str) or not url:
        raise ConfigError(f"storage.ledger_url: must be a URL, got {url!r}")
    check_url(url, from_file=not from_env)
    if url.startswith("sqlite:"):
        return LedgerConfig()
    password = env.get("CALLREC_LEDGER_PASSWORD") or None
    if password is None and "ledger_password_file" in storage:
        where = "storage.ledger_password_file"
        password = _read_secret(_path(storage["ledger_password_file"], where), where)
    return LedgerConfig(url=url, password=password)


def _asterisk(data: Mapping[str, Any]) -> AsteriskSettings:
    section = _section(data, "asterisk", {"did_forms", "caller_id_form"})
    forms = section.get("did_forms", list(DEFAULT_DID_FORMS))
    if (
        not isinstance(forms, list)
        or not forms
        or not all(isinstance(form, str) and form in NUMBER_FORMS for form in forms)
    ):
        raise ConfigError(
            f"asterisk.did_forms: must be a list of {', '.join(NUMBER_FORMS)}, got {forms!r}"
        )
    caller_id_form = section.get("caller_id_form", DEFAULT_CALLER_ID_FORM)
    if caller_id_form not in NUMBER_FORMS:
        raise ConfigError(
            f"asterisk.caller_id_form: must be one of {', '.join(NUMBER_FORMS)}, "
            f"got {caller_id_form!r}"
        )
    return AsteriskSettings(did_forms=tuple(dict.fromkeys(forms)), caller_id_form=caller_id_form)


def read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None


def load_settings(config: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    path = config
    if path is None and env.get("CALLREC_CONFIG"):
        path = Path(env["CALLREC_CONFIG"])
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    data: dict[str, Any] = read_file(path) if path is not None else {}
    source = str(path) if path is not None else "built-in defaults"
    for key in data:
        if key not in POLICY_SECTIONS + APP_SECTIONS:
            raise ConfigError(
                f"{key}: unknown section (known: {', '.join(POLICY_SECTIONS + APP_SECTIONS)})"
            )
    try:
        policy = policy_from_mapping(data)
        # Each line's notice states its retention (the prompt catalog says what each says).
        check_notices(policy, promises(load_catalog()))
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None

    storage = _section(
        data,
        "storage",
        {
            "data_dir",
            "spool_dir",
            "spool_mode",
            "longest_call_hours",
            "recording_format",
            "controller_id",
            "ledger_url",
            "ledger_password_file",
            "lock_check_seconds",
        },
    )
    # Absolute, because Asterisk is told the spool path (CALLREC_FILE) and has its own cwd.
    if env.get("CALLREC_DATA_DIR"):
        data_dir = _path(env["CALLREC_DATA_DIR"], "CALLREC_DATA_DIR").absolute()
    elif "data_dir" in storage:
        data_dir = _path(storage["data_dir"], "storage.data_dir").absolute()
    else:
        data_dir = DEFAULT_DATA_DIR.absolute()
    if "spool_dir" in storage:
        spool_dir = _path(storage["spool_dir"], "storage.spool_dir").absolute()
    else:
        spool_dir = data_dir / "spool"
    spool_mode = _spool_mode(storage.get("spool_mode", DEFAULT_SPOOL_MODE))
    hours = storage.get("longest_call_hours", DEFAULT_LONGEST_CALL_HOURS)
    if isinstance(hours, bool) or not isinstance(hours, int | float) or not 1 <= hours <= 168:
        raise ConfigError(
            f"storage.longest_call_hours: must be a number of hours from 1 to 168, got {hours!r}"
        )
    recording_format = storage.get("recording_format", "wav")
    if recording_format not in RECORDING_FORMATS:
        raise ConfigError(
            f"storage.recording_format: must be one of {', '.join(RECORDING_FORMATS)}, "
            f"got {recording_format!r}"
        )
    ledger = _ledger(storage, env)
    lock_check = storage.get("lock_check_seconds", DEFAULT_LOCK_CHECK_SECONDS)
    if (
        isinstance(lock_check, bool)
        or not isinstance(lock_check, int | float)
        or not 0.1 <= lock_check <= 300
    ):
        raise ConfigError(
            "storage.lock_check_seconds: must be a number of seconds from 0.1 to 300, "
            f"got {lock_check!r}"
        )

    controller_id = env.get("CALLREC_CONTROLLER_ID") or storage.get("controller_id")
    if controller_id is not None and not (
        isinstance(controller_id, str) and CONTROLLER_ID.match(controller_id)
    ):
        raise ConfigError(
            "storage.controller_id: 1 to 64 letters, digits, '.', '_', ':' or '-', "
            f"got {controller_id!r}"
        )

    ari = _section(
        data,
        "ari",
        {"url", "user", "password_file", "app", "max_connections", "shed_backlog"}
        | {"shed_decision_lag_ms"},
    )
    password = env.get("CALLREC_ARI_PASSWORD", "")
    if not password and "password_file" in ari:
        password = _read_secret(
            _path(ari["password_file"], "ari.password_file"), "ari.password_file"
        )
    ari_settings = AriSettings(
        url=env.get("CALLREC_ARI_URL") or _str(ari, "ari", "url", DEFAULT_ARI_URL),
        user=env.get("CALLREC_ARI_USER") or _str(ari, "ari", "user", "callrec"),
        password=password,
        app=_str(ari, "ari", "app", DEFAULT_APP),
        max_connections=_count(ari, "ari", "max_connections", DEFAULT_ARI_MAX_CONNECTIONS)
        or DEFAULT_ARI_MAX_CONNECTIONS,
        shed_backlog=_count(ari, "ari", "shed_backlog", None),
        shed_decision_lag_ms=_count(ari, "ari", "shed_decision_lag_ms", None),
    )
    if not ari_settings.url.startswith(("http://", "https://")):
        raise ConfigError(f"ari.url: must start with http:// or https://, got {ari_settings.url!r}")

    mqtt = _section(data, "mqtt", {"url", "prefix", "password_file"})
    mqtt_url = env.get("CALLREC_MQTT_URL") or mqtt.get("url")
    if mqtt_url is not None and not (
        isinstance(mqtt_url, str) and mqtt_url.startswith(("mqtt://", "mqtts://"))
    ):
        raise ConfigError(f"mqtt.url: must start with mqtt:// or mqtts://, got {mqtt_url!r}")
    if mqtt_url:
        try:
            urlsplit(mqtt_url).port  # noqa: B018 - parsing it is the check
        except ValueError as error:
            # The URL may hold a password: name the problem, not the URL.
            raise ConfigError(f"mqtt.url: not a usable URL ({error})") from None
    mqtt_settings = MqttSettings(
        url=mqtt_url or None,
        prefix=_str(mqtt, "mqtt", "prefix", "callrec"),
        password_file=(
            _path(mqtt["password_file"], "mqtt.password_file") if "password_file" in mqtt else None
        ),
    )

    fastagi = _section(data, "fastagi", {"host", "port", "allow"})
    port = fastagi.get("port", DEFAULT_FASTAGI_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"fastagi.port: must be a port number, got {port!r}")
    allow = fastagi.get("allow", list(LOOPBACK))
    if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
        raise ConfigError("fastagi.allow: must be a list of IP addresses")
    for address in allow:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(f"fastagi.allow: {address!r} is not an IP address") from None
    host = _str(fastagi, "fastagi", "host", "127.0.0.1")
    monitor = _section(data, "monitor", {"listen"})
    listen = _listen(env.get("CALLREC_MONITOR_LISTEN", monitor.get("listen", DEFAULT_MONITOR)))
    return Settings(
        policy=policy,
        data_dir=data_dir,
        spool_dir=spool_dir,
        ari=ari_settings,
        mqtt=mqtt_settings,
        fastagi=FastAgiSettings(host=host, port=port, allow=tuple(allow)),
        source=source,
        spool_mode=spool_mode,
        longest_call=timedelta(hours=hours),
        recording_format=recording_format,
        controller_id=controller_id,
        ledger=ledger,
        lock_check_seconds=float(lock_check),
        asterisk=_asterisk(data),
        monitor=MonitorSettings(listen=listen),
    )
