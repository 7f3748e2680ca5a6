"""Where the files that ship with callrec are: in a checkout, or in an installed package.

A checkout keeps them where people edit them (`scenarios/`, `asterisk-conf/`); the wheel
carries copies inside the `callrec` package (`pyproject.toml` maps those directories to
`callrec/scenarios_data/` and `callrec/asterisk_conf/`), so `callrec demo` and the simulated
PBX's dialled-number table work from an installed package run in any directory.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from flows.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parent
DISTRIBUTION = "callrec"


def _shipped(packaged: str, checkout: str) -> Path:
    installed = _PACKAGE / packaged
    if installed.is_dir():
        return installed
    source = _PACKAGE.parent / checkout
    if source.is_dir():
        return source
    raise ConfigError(
        f"{checkout}/ is missing: neither {installed} (an installed package) nor {source} "
        "(a checkout) exists; reinstall callrec"
    )


def scenarios_dir() -> Path:
    """The policy's cases that `callrec demo` plays."""
    return _shipped("scenarios_data", "scenarios")


def asterisk_conf_dir() -> Path:
    """The shipped Asterisk configuration (dialplan snippets and settings)."""
    return _shipped("asterisk_conf", "asterisk-conf")


def version() -> str:
    """The installed distribution's version (`callrec --version`)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"
