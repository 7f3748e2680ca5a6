"""Where the ledger is, as configured: `LedgerConfig` and the checks of a ledger URL.

No driver here: `callrec/` reads its configuration with it and stays off the backends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from flows.errors import ConfigError

LEDGER_FILE = "ledger.sqlite3"  # the SQLite ledger's name in the data directory
SQLITE = "sqlite"
POSTGRESQL = "postgresql"
_SCHEMES = {"sqlite": SQLITE, "postgresql": POSTGRESQL, "postgres": POSTGRESQL}


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """Where the ledger is. `url` None: the data directory's SQLite file."""

    url: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def backend(self) -> str:
        return SQLITE if self.url is None else backend_of(self.url)

    @property
    def shown(self) -> str:
        return "the data directory's SQLite ledger" if self.url is None else redact(self.url)


def backend_of(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigError(
            f"storage.ledger_url: must start with sqlite:// or postgresql://, got {redact(url)!r}"
        )
    return _SCHEMES[scheme]


def check_url(url: str, *, from_file: bool) -> str:
    """`url` when usable as a ledger URL; a `ConfigError` naming what is wrong otherwise."""
    kind = backend_of(url)
    parts = urlsplit(url)
    if kind == SQLITE:
        if parts.netloc or parts.path not in ("", "/"):
            raise ConfigError(
                "storage.ledger_url: the SQLite ledger is always the data directory's "
                "ledger.sqlite3; write sqlite:// and set storage.data_dir"
            )
        return url
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError as error:
        raise ConfigError(f"storage.ledger_url: not a usable URL ({error})") from None
    if from_file and parts.password is not None:
        raise ConfigError(
            "storage.ledger_url: secrets are not kept in the config file; set "
            "storage.ledger_password_file or the CALLREC_LEDGER_PASSWORD environment variable"
        )
    if not parts.path.strip("/"):
        raise ConfigError("storage.ledger_url: name the database, postgresql://user@host/db")
    return url


_PASSWORD_IN_URL = re.compile(r"(://[^:/@]*):[^@/]*@")


def redact(url: str) -> str:
    """`url` without a password, for messages."""
    return _PASSWORD_IN_URL.sub(r"\1:***@", url)
