"""`callrec asterisk install` into an existing Asterisk: the operator's files are kept byte
for byte (only include lines are appended, each backed up first), callrec's own files are
generated from the configuration under callrec/, a dry run changes nothing, a second run
changes nothing, secrets come only from the environment, and modules.conf is only read.

The fixture (tests/asterisk_operator/) is a typical small PBX: a from-internal context, a
pjsip endpoint, an operator queue and ARI user, modules.conf with autoload = yes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_helpers import callrec
from readme_recipe import complaints_recipe
from reference import SHARED, absent
from test_asterisk_conf import read_dialplan, read_ini

from callrec.asterisk_install import NEEDED_MODULES, TEST_PARTY_MODULES, module_warnings

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parent / "asterisk_operator"
CONF = ROOT / "asterisk-conf"
PASSWORD = "ari-s3cret"
ENV = {"CALLREC_ARI_PASSWORD": PASSWORD}
SIP = {"CALLREC_SIP_CUSTOMER_PASSWORD": "cust-pw", "CALLREC_SIP_AGENT_PASSWORD": "agent-pw"}
INCLUDED = {
    "extensions.conf": ["callrec/extensions.conf"],
    "queues.conf": ["callrec/queues.conf"],
    "ari.conf": ["callrec/ari.conf"],
    "http.conf": ["callrec/http.conf"],  # the fixture's HTTP server is off
}
# The README's recipe ("Adding a line"): a second sales number and a complaints line.
LINES_TOML = """
[lines.sales]
policy = "notice"
numbers = ["040 40 40 45", "040 40 40 46"]
purposes = ["evidence", "training"]
prompt = "callrec-sales-notice"

[lines.service]
policy = "consent"
numbers = ["040 40 40 40", "040 40 40 30", "040 40 40 85", "040 40 40 42", "040 40 40 66",
           "040 40 40 41"]
purposes = ["quality", "evidence"]
prompt = "callrec-consent-question"
invalid_key_prompt = "callrec-consent-invalid"
ask_again_prompt = "callrec-consent-again"
"""
LINES_TOML += complaints_recipe()


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under `directory` by relative path, with its SHA-256."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    target = tmp_path / "etc"
    shutil.copytree(FIXTURE, target)
    return target


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def install(
    etc: Path, *extra: str, env: dict[str, str] | None = None, config: Path | None = None
) -> Run:
    """`callrec asterisk install --etc ETC ...` as a process, with only `env`'s secrets."""
    done = callrec(
        "asterisk",
        "install",
        "--etc",
        str(etc),
        *extra,
        data_dir=etc.parent / "data",
        config=config,
        env=ENV if env is None else env,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def test_install_keeps_every_operator_file_byte_for_byte(etc: Path) -> None:
    """After an install each operator file is its old bytes plus appended include lines (a
    backup holds the old bytes), and their contexts, endpoints, queues and ARI users are
    all still there; modules.conf and pjsip.conf are not touched."""
    before = {p.name: p.read_bytes() for p in etc.iterdir()}
    result = install(etc)
    assert result.code == 0, result.err
    for name, old in before.items():
        new = (etc / name).read_bytes()
        assert new.startswith(old), name
        added = new[len(old) :].decode().splitlines()
        includes = [line for line in added if line.startswith("#include")]
        assert includes == [f"#include {f}" for f in INCLUDED.get(name, [])], name
        assert all(not line or line.startswith((";", "#include")) for line in added), name
        if name in INCLUDED:
            [backup] = etc.glob(f"{name}.callrec-backup-*")
            assert backup.read_bytes() == old
        else:
            assert new == old and not list(etc.glob(f"{name}.callrec-backup-*")), name
    plan = read_dialplan(etc / "extensions.conf")
    assert {"from-internal", "from-trunk", "callrec-inbound", "callrec-ari-inbound"} <= set(
        plan.contexts
    )
    assert plan.globals["TRUNK"] == "PJSIP/provider"  # theirs and ours, both kept
    assert plan.globals["CALLREC_MODE"].split()[0] == "ari"
    queues = dict(read_ini(etc / "queues.conf"))
    assert queues["support"]["member"] == ["PJSIP/100"]
    assert queues["service"]["membergosub"] == ["callrec-agent-connect"]
    users = dict(read_ini(etc / "ari.conf"))
    assert users["dashboard"]["password"] == ["operator-dashboard"]
    assert users["callrec"]["password"] == [PASSWORD]
    assert (etc / "callrec" / "ari.conf").stat().st_mode & 0o007 == 0


def test_a_second_install_changes_nothing(etc: Path) -> None:
    """Installing again with the same configuration writes no file and makes no backup."""
    assert install(etc).code == 0
    first = snapshot(etc)
    again = install(etc)
    assert again.code == 0, again.err
    assert snapshot(etc) == first
    assert "nothing to change" in again.out


def test_dry_run_prints_the_diff_and_changes_nothing(etc: Path) -> None:
    """--dry-run prints a unified diff of what an install would do (the ARI password
    masked) and leaves every file as it was."""
    before = snapshot(etc)
    result = install(etc, "--dry-run")
    assert result.code == 0, result.err
    assert snapshot(etc) == before
    assert "--- a/extensions.conf\n+++ b/extensions.conf\n" in result.out
    assert "+#include callrec/extensions.conf\n" in result.out
    assert "+++ b/callrec/queues.conf" in result.out
    assert "+exten => 040404045,1,Set(CALLREC_QUEUE=sales)" in result.out
    assert PASSWORD not in result.out and "+password = ********" in result.out


def test_install_refuses_without_the_ari_password(etc: Path) -> None:
    """Without CALLREC_ARI_PASSWORD (or ari.password_file) the install writes nothing and
    says, in one line, which variable is missing."""
    before = snapshot(etc)
    result = install(etc, env={})
    assert result.code == 2
    assert "CALLREC_ARI_PASSWORD not set" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert snapshot(etc) == before


def test_modules_conf_is_only_read_and_noload_warns(etc: Path) -> None:
    """An operator's autoload = yes modules.conf is never changed; a module callrec needs
    that it noload's is named in a warning."""
    before = (etc / "modules.conf").read_bytes()
    result = install(etc)
    assert result.code == 0
    assert (etc / "modules.conf").read_bytes() == before
    assert "res_stasis_snoop" in result.err and "warning" in result.err
    assert "chan_sip" not in result.err and "app_voicemail" not in result.err


def test_module_check_with_autoload_off_names_what_is_not_loaded(tmp_path: Path) -> None:
    """With autoload = no, every needed module without a load line is named."""
    modules = tmp_path / "modules.conf"
    loaded = "\n".join(f"load => {name}.so" for name in NEEDED_MODULES if name != "app_queue")
    modules.write_text(f"[modules]\nautoload = no\n{loaded}\n", "utf-8")
    [warning] = module_warnings(modules, NEEDED_MODULES)
    assert "app_queue" in warning and "app_dial" not in warning


def test_test_parties_only_when_asked(etc: Path) -> None:
    """Without --test-parties nothing of the test endpoints or test contexts is installed;
    with it they are, their SIP passwords from the environment (refused while missing)."""
    assert install(etc).code == 0
    assert not (etc / "callrec" / "pjsip-test-parties.conf").exists()
    assert not (etc / "callrec" / "extensions-test.conf").exists()
    assert "callrec" not in (etc / "pjsip.conf").read_text("utf-8")
    refused = install(etc, "--test-parties")
    assert refused.code == 2 and "CALLREC_SIP_AGENT_PASSWORD" in refused.err
    done = install(etc, "--test-parties", env={**ENV, **SIP})
    assert done.code == 0, done.err
    endpoints = {n for n, v in read_ini(etc / "pjsip.conf") if v.get("type") == ["endpoint"]}
    assert endpoints == {"100", "customer", "agent", "trunk"}
    assert "callrec-test-caller" in read_dialplan(etc / "extensions.conf").contexts
    assert dict(read_ini(etc / "queues.conf"))["sales"]["member"] == ["PJSIP/agent,0,agent"]


def test_agi_mode_is_one_global(etc: Path) -> None:
    """--mode agi installs the same dialplan with CALLREC_MODE=agi."""
    assert install(etc, "--mode", "agi").code == 0
    assert read_dialplan(etc / "extensions.conf").globals["CALLREC_MODE"].split()[0] == "agi"


def test_an_operator_queue_of_the_same_name_is_refused(etc: Path) -> None:
    """A queue the operator already has under a line's queue name is not shadowed: the
    install refuses, naming it, and writes nothing."""
    queues = etc / "queues.conf"
    queues.write_text(queues.read_text("utf-8") + "\n[sales]\nstrategy = ringall\n", "utf-8")
    before = snapshot(etc)
    result = install(etc)
    assert result.code == 2 and "queue [sales]" in result.err
    assert snapshot(etc) == before


def test_freepbx_custom_files_get_the_include(etc: Path) -> None:
    """Where extensions_custom.conf exists (FreePBX), the include goes there and FreePBX's
    own extensions.conf is not touched."""
    own = (etc / "extensions.conf").read_bytes()
    (etc / "extensions_custom.conf").write_text("[from-internal-custom]\n", "utf-8")
    assert install(etc).code == 0
    assert (etc / "extensions.conf").read_bytes() == own
    custom = (etc / "extensions_custom.conf").read_text("utf-8")
    assert custom.startswith("[from-internal-custom]\n")
    assert custom.endswith("#include callrec/extensions.conf\n")


def test_a_new_line_and_number_are_one_configuration_entry(etc: Path, tmp_path: Path) -> None:
    """Issue 21: a second sales number and a complaints line added to the configuration
    alone become DIDs (national and E.164) setting their queue and a complaints queue; a
    re-install changes only callrec's own files."""
    assert install(etc).code == 0
    operator = {n: h for n, h in snapshot(etc).items() if not n.startswith("callrec/")}
    config = tmp_path / "callrec.toml"
    config.write_text(LINES_TOML, "utf-8")
    result = install(etc, config=config)
    assert result.code == 0, result.err
    after = snapshot(etc)
    assert {n: h for n, h in after.items() if not n.startswith("callrec/")} == operator
    plan = read_dialplan(etc / "extensions.conf")
    for did, queue in (("040404046", "sales"), ("+38640404046", "sales"),
                       ("040404050", "complaints"), ("+38640404050", "complaints")):  # fmt: skip
        steps = plan.extension("callrec-inbound", did)
        assert steps[0].data == f"CALLREC_QUEUE={queue}", did
        assert steps[1].data == "callrec-${CALLREC_MODE}-inbound,${EXTEN},1"
    assert dict(read_ini(etc / "queues.conf"))["complaints"]["membergosub"] == [
        "callrec-agent-connect"
    ]
    assert "module reload app_queue.so" in result.out  # what to reload, said


def test_did_forms_come_from_the_configuration(etc: Path, tmp_path: Path) -> None:
    """`[asterisk] did_forms` adds the 00386 form; a form that does not exist is a one-line
    configuration error."""
    config = tmp_path / "callrec.toml"
    config.write_text('[asterisk]\ndid_forms = ["national", "international"]\n', "utf-8")
    assert install(etc, config=config).code == 0
    plan = read_dialplan(etc / "extensions.conf")
    assert plan.extension("callrec-inbound", "0038640404045")[0].data == "CALLREC_QUEUE=sales"
    assert not [s for s in plan.contexts["callrec-inbound"] if s.exten.startswith("+")]
    config.write_text('[asterisk]\ndid_forms = ["e.164"]\n', "utf-8")
    bad = install(etc, config=config)
    assert bad.code == 2 and "asterisk.did_forms" in bad.err


def test_the_standalone_test_pbx_config_is_an_install(tmp_path: Path) -> None:
    """Installing with the test parties into a copy of asterisk-conf/ (the test PBX's whole
    configuration) finds every include in place and every file as generated: it is what
    an install makes of a fresh Asterisk."""
    copy = tmp_path / "etc"
    shutil.copytree(CONF, copy, ignore=shutil.ignore_patterns("*.md", "*.sh", "Docker*", "*.yml"))
    before = snapshot(copy)
    result = install(copy, "--test-parties", "--dry-run", env={})
    assert result.code == 0, result.err
    assert result.out == ""  # no diff
    assert snapshot(copy) == before


def test_needed_modules_include_what_they_require() -> None:
    """Every module a needed one requires (asterisk-modules.json) is needed too, and the test
    PBX's modules.conf loads them all."""
    path = SHARED / "asterisk-modules.json"
    if not path.is_file():
        pytest.skip(absent(SHARED))
    modules = json.loads(path.read_text("utf-8"))["modules"]
    needed = set(NEEDED_MODULES) | set(TEST_PARTY_MODULES)
    for name in needed:
        for required in modules[name]["requires"]:
            assert required in needed or modules.get(required, {}).get("builtin"), (
                name,
                required,
            )
    assert module_warnings(CONF / "modules.conf", sorted(needed)) == []
