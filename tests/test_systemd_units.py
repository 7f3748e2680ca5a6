"""The systemd units an operator installs (deploy/systemd/): `systemd-analyze verify` passes,
`systemd-analyze security` rates each service at most 3.0, the controller units wait for
READY and watch the loop, secrets are required, and the user and spool files do what they
say. Needs Debian's systemd (`make test` installs it as root); skipped without it."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "deploy" / "systemd"
SERVICES = sorted(UNITS.glob("*.service"))
CONTROLLERS = ("callrec-serve.service", "callrec-fastagi.service")
INSTALLED = "/opt/callrec/bin/callrec"  # where README.md's install puts the entry point
MAX_EXPOSURE = 3.0

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is missing: `make test` installs Debian's systemd when run as root",
)


def _settings(path: Path) -> dict[str, list[str]]:
    """A unit file's settings, every value of a key that is given more than once."""
    found: dict[str, list[str]] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def _installed_copies(dest: Path) -> list[Path]:
    """The units as installed here: ExecStart pointed at this environment's `callrec`
    (what `pip install` made), everything else as shipped."""
    entry = Path(sys.executable).parent / "callrec"
    if not entry.exists():
        pytest.skip(f"{entry} is missing: the package is not installed in this environment")
    copies = []
    for unit in sorted(UNITS.glob("*.service")) + sorted(UNITS.glob("*.timer")):
        text = unit.read_text(encoding="utf-8")
        copy = dest / unit.name
        copy.write_text(text.replace(INSTALLED, str(entry)), encoding="utf-8")
        copies.append(copy)
    return copies


def _analyze(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def test_every_service_starts_the_documented_entry_point() -> None:
    """Each service runs the `callrec` that the README's install puts at /opt/callrec."""
    assert {p.name for p in SERVICES} >= {*CONTROLLERS, "callrec-sweep.service"}
    for unit in SERVICES:
        (exec_start,) = _settings(unit)["ExecStart"]
        assert exec_start.split()[0] == INSTALLED, unit.name


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds nothing wrong in any shipped unit once installed."""
    copies = _installed_copies(tmp_path)
    result = _analyze("verify", *copies, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ours = [line for line in result.stderr.splitlines() if "callrec" in line]
    assert not ours, "\n".join(ours)


def test_each_service_is_rated_at_most_3(tmp_path: Path) -> None:
    """`systemd-analyze security --offline=yes` rates each service at most 3.0 (OK)."""
    for copy in _installed_copies(tmp_path):
        if copy.suffix != ".service":
            continue
        result = _analyze("security", "--offline=yes", f"./{copy.name}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
        assert match is not None, result.stdout[-500:]
        assert float(match.group(1)) <= MAX_EXPOSURE, f"{copy.name}: {match.group(1)}"


def test_the_units_keep_their_contract() -> None:
    """Controllers are Type=notify with a watchdog; every service needs its secrets file
    (no leading '-'), runs as callrec, keeps its state in StateDirectory=callrec and may
    write the configured spool, and nothing else beyond it."""
    example = tomllib.loads((ROOT / "callrec.example.toml").read_text(encoding="utf-8"))
    spool = example["storage"]["spool_dir"]
    assert example["storage"]["data_dir"] == "/var/lib/callrec"  # StateDirectory=callrec
    for unit in SERVICES:
        s = _settings(unit)
        assert s["User"] == ["callrec"], unit.name
        assert s["EnvironmentFile"] == ["/etc/callrec/secrets.env"], unit.name
        assert s["StateDirectory"] == ["callrec"], unit.name
        assert s["ReadWritePaths"] == [spool], unit.name
        assert s["ProtectSystem"] == ["strict"] and s["CapabilityBoundingSet"] == [""]
        if unit.name in CONTROLLERS:
            assert s["Type"] == ["notify"], unit.name
            assert s["NotifyAccess"] == ["main"] and s["WatchdogSec"] == ["30s"], unit.name


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
def test_sysusers_creates_the_callrec_system_user(tmp_path: Path) -> None:
    """callrec.sysusers makes a system user callrec, home /var/lib/callrec, no login
    shell, and creates no group of Asterisk's."""
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", UNITS / "callrec.sysusers"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    users = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc" / "passwd").read_text(encoding="utf-8").splitlines()
    }
    callrec = users["callrec"]
    assert int(callrec[2]) < 1000  # a system user
    assert callrec[5:] == ["/var/lib/callrec", "/usr/sbin/nologin"]
    groups = (tmp_path / "etc" / "group").read_text(encoding="utf-8")
    assert "asterisk" not in groups


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="no systemd-tmpfiles")
def test_tmpfiles_makes_the_shared_spool_setgid_asterisk(tmp_path: Path) -> None:
    """callrec.tmpfiles creates the spool the units may write, 2770 and group asterisk, so
    Asterisk writes there, callrec removes, and nobody else reads."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(
        "asterisk:x:990:990::/var/lib/asterisk:/usr/sbin/nologin\n", encoding="utf-8"
    )
    (tmp_path / "etc" / "group").write_text("asterisk:x:990:\n", encoding="utf-8")
    result = subprocess.run(
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create", UNITS / "callrec.tmpfiles"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (spool,) = _settings(UNITS / "callrec-serve.service")["ReadWritePaths"]
    made = (tmp_path / spool.lstrip("/")).stat()
    assert stat.S_IMODE(made.st_mode) == 0o2770
    assert (made.st_uid, made.st_gid) == (990, 990)
