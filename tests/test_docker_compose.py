"""asterisk-conf/docker-compose.yml as the compose tooling Debian ships reads it (1.29, and
Compose v2 where installed): valid, the controller never root, every service with a
healthcheck, and the controller started only once Asterisk and the broker are healthy."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "asterisk-conf"
COMPOSE = CONF / "docker-compose.yml"
REQUIRED = {
    "CALLREC_ARI_PASSWORD": "ari-secret",
    "CALLREC_SIP_CUSTOMER_PASSWORD": "customer-secret",
    "CALLREC_SIP_AGENT_PASSWORD": "agent-secret",
    "CALLREC_SIP_EXTERNAL_ADDRESS": "192.0.2.10",
}


def _compose_commands() -> list[list[str]]:
    commands = []
    if shutil.which("docker-compose"):
        commands.append(["docker-compose"])
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            commands.append(["docker", "compose"])
    return commands


COMMANDS = _compose_commands()
pytestmark = pytest.mark.skipif(
    not COMMANDS,
    reason="no compose tooling: `make test` installs Debian's docker-compose when run as root",
)


def _config(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CALLREC_", "COMPOSE_"))}
    return subprocess.run(
        [*command, "--project-directory", str(CONF), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        cwd=CONF,
        env={**clean, **env},
        timeout=60,
    )


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_compose_file_validates(command: list[str]) -> None:
    """The compose tooling accepts the file and resolves it to the three services, the
    controller starting once Asterisk and the broker report healthy."""
    result = _config(command, REQUIRED)
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)
    services = resolved["services"]
    assert set(services) == {"asterisk", "controller", "mosquitto"}
    depends = services["controller"]["depends_on"]
    assert depends == {
        "asterisk": {"condition": "service_healthy"},
        "mosquitto": {"condition": "service_healthy"},
    }
    for name, service in services.items():
        assert service["healthcheck"]["test"], name


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_missing_secret_is_refused_by_name(command: list[str]) -> None:
    """Without the ARI password the file does not resolve, and the error names it."""
    env = {k: v for k, v in REQUIRED.items() if k != "CALLREC_ARI_PASSWORD"}
    result = _config(command, env)
    assert result.returncode != 0
    assert "CALLREC_ARI_PASSWORD" in result.stderr


def test_compose_file_names_no_project_and_runs_no_root_controller() -> None:
    """No top-level `name:` (docker-compose 1.29 refuses it); the controller runs as the
    image's callrec user with no capabilities, and the image's last USER is callrec."""
    source = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert "name" not in source
    controller = source["services"]["controller"]
    assert controller["user"] == "callrec"
    assert controller["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in controller["security_opt"]
    dockerfile = (CONF / "Dockerfile").read_text(encoding="utf-8")
    stage = dockerfile[dockerfile.index(" AS controller") :]
    assert re.findall(r"^USER (\S+)$", stage, re.MULTILINE)[-1] == "callrec"


def test_controller_image_ships_what_the_wheel_needs() -> None:
    """The controller image copies every directory the package is built from (the mapped
    scenarios/ and asterisk-conf/ included) and the build context lets them through."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = config["tool"]["setuptools"]
    mapped = setuptools.get("package-dir", {})
    tops = {mapped.get(p, p.replace(".", "/")).split("/")[0] for p in setuptools["packages"]}
    dockerfile = (CONF / "Dockerfile").read_text(encoding="utf-8")
    ignore = (CONF / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    for top in sorted(tops):
        assert f"COPY {top} /src/{top}" in dockerfile, top
        assert f"!{top}/" in ignore, top
