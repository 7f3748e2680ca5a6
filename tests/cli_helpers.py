"""The `callrec` command as operators run it: a real process, settings from the environment
and an optional config file, and a controller that can be started once and stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

START_TIMEOUT = 60.0  # seconds for `callrec fastagi` to open its store and listen


def cli_env(data_dir: Path, config: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a command: no CALLREC_* of the caller's, the given data dir, and
    in a test's PostgreSQL run (the `ledger` fixture) that data directory's ledger there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
    env["CALLREC_DATA_DIR"] = str(data_dir)
    env.update(ledger_env(data_dir))
    if config is not None:
        env["CALLREC_CONFIG"] = str(config)
    env.update(extra)
    return env


def ledger_env(data_dir: Path) -> dict[str, str]:
    """CALLREC_LEDGER_URL and CALLREC_LEDGER_PASSWORD of the store at `data_dir` in this
    test's backend; nothing on SQLite."""
    from storage_helpers import ledger_for

    ledger = ledger_for(data_dir)
    if ledger is None or ledger.url is None:
        return {}
    parts = urlsplit(ledger.url)
    netloc = f"{parts.username}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return {
        "CALLREC_LEDGER_URL": urlunsplit(parts._replace(netloc=netloc)),
        "CALLREC_LEDGER_PASSWORD": parts.password or "",
    }


def callrec(
    *args: str,
    data_dir: Path,
    config: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m callrec.cli ARGS` in the data directory's parent."""
    result = subprocess.run(
        [sys.executable, "-m", "callrec.cli", *args],
        capture_output=True,
        text=True,
        env={**cli_env(data_dir, config), **(env or {})},
        cwd=data_dir.parent if data_dir.parent.exists() else None,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"callrec {' '.join(args)} -> {result.returncode}\n{result.stderr}")
    return result


def fastagi_config(directory: Path, extra: str = "") -> Path:
    """A config file for `callrec fastagi` on a free loopback port."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "fastagi.toml"  # not ./callrec.toml: never read unasked
    config.write_text(f'[fastagi]\nhost = "127.0.0.1"\nport = 0\n{extra}')
    return config


def serve_once(data_dir: Path, config: Path) -> str:
    """Start `callrec fastagi` on `data_dir`, wait until it listens, stop it with SIGTERM as
    systemd does; its standard error. Raises AssertionError when it does not come up."""
    log = config.parent / f"fastagi-{time.monotonic_ns()}.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "callrec.cli", "fastagi"],
            stdout=subprocess.DEVNULL,
            stderr=handle,
            env=cli_env(data_dir, config),
            cwd=config.parent,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "listening on" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"callrec fastagi did not start:\n{log.read_text()}")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return log.read_text()


def start_fastagi(
    directory: Path, name: str, data_dir: Path, config: Path, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """`callrec fastagi` as a process, once it listens; its log in `directory/<name>.log`."""
    log = directory / f"{name}.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "callrec.cli", "fastagi"],
            stdout=subprocess.DEVNULL,
            stderr=handle,
            env={**cli_env(data_dir, config), **env},
            cwd=directory,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while "listening on" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"callrec fastagi did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return proc
