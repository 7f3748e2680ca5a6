"""A real mosquitto broker for tests, on a free 127.0.0.1 port with a generated config.

    broker = Mosquitto(tmp_path)      # picks the port; nothing runs yet
    broker.start()                    # returns once the port accepts connections
    broker.stop(); broker.restart()   # the same port every time, so clients can reconnect
    broker.kill()                     # SIGKILL: a crash, no goodbye to the clients
    broker.pause(); broker.resume()   # SIGSTOP/SIGCONT: a hung broker that keeps its sockets

Tests that need it carry `requires_mosquitto`, which skips them (with the reason) where the
binary is missing; `make test` installs it.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest

HOST = "127.0.0.1"
START_TIMEOUT = 5.0  # seconds; mosquitto listens within milliseconds on an idle machine
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.01


def find_mosquitto() -> str | None:
    """The broker binary: on PATH, or where Debian puts it (/usr/sbin, often not on PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


MOSQUITTO = find_mosquitto()
requires_mosquitto = pytest.mark.skipif(
    MOSQUITTO is None,
    reason="needs the mosquitto broker (apt-get install mosquitto; `make test` does it)",
)


# Below Linux's ephemeral range (32768-60999): a client that keeps reconnecting to a port
# in that range while nothing listens there can be given that very port as its own source
# port and connect to itself (TCP simultaneous open), then wait for a broker that is itself.
PORTS = range(20_000, 32_000)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, outside the ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        port = rng.choice(PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1} on {HOST}")


def make_password_file(path: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file (hashed by `mosquitto_passwd`) for `users`."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not os.access(tool, os.X_OK):
        pytest.skip("needs mosquitto_passwd (part of the mosquitto package)")
    path.write_text("", encoding="utf-8")
    for user, password in users.items():
        subprocess.run([tool, "-b", str(path), user, password], check=True, capture_output=True)
    return path


@dataclass(frozen=True)
class TlsFiles:
    """Server certificate, its key, and the CA that signed it (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost, by `openssl`."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n", encoding="utf-8")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        ["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=callrec test CA"],
        ["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", ext],
    ]  # fmt: skip
    for command in commands:
        subprocess.run([str(part) for part in command], check=True, capture_output=True)
    return TlsFiles(ca=ca, cert=cert, key=key)


class Mosquitto:
    """One mosquitto process at a time, always on the same port and data directory.

    Persistence is on, so a client's persistent session (clean_session=False) and the QoS 1
    messages queued for it survive `restart()`; `kill()` loses what was not yet saved.
    """

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        password_file: Path | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        if MOSQUITTO is None:
            pytest.skip("needs the mosquitto broker")
        self.binary = MOSQUITTO
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.host = HOST
        self.config = directory / "mosquitto.conf"
        self.log_file = directory / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.config.write_text(self._config_text(password_file, tls), encoding="utf-8")
        self.tls = tls is not None

    def _config_text(self, password_file: Path | None, tls: TlsFiles | None) -> str:
        lines = [
            f"listener {self.port} {HOST}",
            # Started as root, mosquitto would switch to user "mosquitto", who cannot write
            # the test's directory; naming the current user keeps it as it is.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "persistence true",
            f"persistence_location {self.directory}/",
            "autosave_interval 1",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
        ]
        if password_file is None:
            lines.append("allow_anonymous true")
        else:
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        if tls is not None:
            lines += [f"cafile {tls.ca}", f"certfile {tls.cert}", f"keyfile {tls.key}"]
        return "\n".join(lines) + "\n"

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        """What the broker logged so far (connections, errors), for assertion messages."""
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the broker; return once its port accepts connections."""
        if self.running:
            raise RuntimeError(f"mosquitto is already running on port {self.port}")
        self._process = subprocess.Popen(
            [self.binary, "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                stderr = self._process.stderr.read() if self._process.stderr else b""
                self._process = None
                raise RuntimeError(
                    f"mosquitto exited at start on port {self.port}: "
                    f"{stderr.decode(errors='replace')}{self.log()}"
                )
            if self._accepts():
                return
            time.sleep(POLL_INTERVAL)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the broker as an operator would (SIGTERM: clients are disconnected, the
        persistence file is written); SIGKILL if it does not exit in time."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Kill the broker without warning, as a crash or power cut would."""
        self._end(signal.SIGKILL, STOP_TIMEOUT)

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused broker would not act on SIGTERM
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        if process.stderr:
            process.stderr.close()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing is answered."""
        if self._process is None:
            raise RuntimeError("mosquitto is not running")
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused broker go on (SIGCONT)."""
        if self._process is None:
            raise RuntimeError("mosquitto is not running")
        self._process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
