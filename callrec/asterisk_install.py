"""`callrec asterisk install`: callrec's files into an existing Asterisk, the operator's kept.

What it does, and nothing else:

* writes the files of `callrec.asterisk_files` under `<etc>/callrec/` (generated from the
  configuration; the ARI password from CALLREC_ARI_PASSWORD or `ari.password_file`, the
  test parties' from the environment);
* adds `#include callrec/<file>` to the operator's extensions.conf, queues.conf, ari.conf
  (http.conf only when its HTTP server is off; pjsip.conf only with the test parties), each
  only where the line is missing, at the end; where FreePBX's `<name>_custom.conf` exists the
  line goes there instead;
* backs up every existing file it changes (`<file>.callrec-backup-<UTC time>`) first.

It never writes modules.conf: it warns about a module callrec needs that the operator's
modules.conf keeps from loading. It refuses, writing nothing, when a secret is missing or
when the operator already has a queue, context or ARI user of the name callrec would add.
A second run with the same configuration changes nothing.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from callrec.asterisk_files import SIP_PASSWORDS, SUBDIR, Options, generate, placeholders, queues
from callrec.config import Settings
from flows.errors import CallrecError
from flows.policy import Policy

# The modules callrec's dialplan, ARI and FastAGI use, with what each of them requires
# (tests/test_asterisk_install.py checks the list against asterisk-modules.json and
# asterisk-conf/modules.conf). Local channels are in the core.
NEEDED_MODULES = (
    "pbx_config", "app_dial", "app_queue", "app_mixmonitor", "func_periodic_hook",
    "app_chanspy", "func_cut", "func_groupcount", "func_uri", "app_stasis", "app_stack",
    "app_exec", "app_verbose", "func_channel", "func_strings", "func_math", "func_logic",
    "res_http_websocket", "res_websocket_client", "res_ari", "res_ari_model",
    "res_ari_applications",
    "res_ari_asterisk", "res_ari_bridges", "res_ari_channels", "res_ari_device_states",
    "res_ari_endpoints", "res_ari_events", "res_ari_playbacks", "res_ari_recordings",
    "res_ari_sounds", "res_stasis", "res_stasis_answer", "res_stasis_device_state",
    "res_stasis_playback", "res_stasis_recording", "res_stasis_snoop", "res_speech",
    "res_agi", "format_wav", "format_sln", "format_pcm", "codec_ulaw", "codec_alaw",
    "res_musiconhold", "bridge_simple",
)  # fmt: skip
TEST_PARTY_MODULES = ("app_playback", "app_senddtmf")
# What `--reload` runs through the Asterisk CLI, per operator file touched.
RELOADS = {
    "extensions.conf": "dialplan reload",
    "queues.conf": "module reload app_queue.so",
    "ari.conf": "module reload res_ari.so",
    "http.conf": "module reload http",
    "pjsip.conf": "module reload res_pjsip.so",
}
_TRUE = {"yes", "true", "y", "t", "1", "on"}  # Asterisk's ast_true()
_INCLUDE = re.compile(r'^\s*#include\s+"?([^"\s]+)"?\s*$')
_SECTION = re.compile(r"^\s*\[([^\]]+)\]")
_PASSWORD = re.compile(r"^(\s*password\s*=\s*)(.*)$")


class InstallError(CallrecError):
    """The install cannot go ahead; nothing was written."""


@dataclass(frozen=True, slots=True)
class Change:
    path: Path
    old: str | None  # None: the file does not exist yet
    new: str
    secret: bool = False  # holds a password: mode 0640, masked in the diff


@dataclass
class Plan:
    etc: Path
    changes: list[Change] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    missing_secrets: list[str] = field(default_factory=list)
    reloads: list[str] = field(default_factory=list)


def plan_install(
    etc: Path,
    policy: Policy,
    options: Options,
    *,
    env: Mapping[str, str],
) -> Plan:
    """What installing into `etc` would change; writes nothing."""
    if not etc.is_dir():
        raise InstallError(f"{etc} is not a directory (the Asterisk configuration, --etc)")
    plan = Plan(etc)
    http_on, http_has_general = _http_state(etc)
    sip = tuple((name, env[name]) for name in SIP_PASSWORDS if env.get(name))
    for name, value in sip:
        _check_secret(name, value)
    if options.ari_password:
        _check_secret("CALLREC_ARI_PASSWORD", options.ari_password)
    options = replace(options, sip_passwords=sip, http_appends=http_has_general)
    _refuse_name_clashes(etc, policy, options)
    files = generate(policy, options)
    if http_on:
        del files[f"{SUBDIR}/http.conf"]
        plan.warnings.append(
            "http.conf: the operator's HTTP server is on; callrec's ARI client must reach it "
            "at ari.url (callrec/http.conf is not included)"
        )
    for relative, text in files.items():
        plan.missing_secrets += placeholders(text)
        path = etc / relative
        _add(plan, path, text, secret="password" in text)
    includes = {
        "extensions.conf": [f"{SUBDIR}/extensions.conf"],
        "queues.conf": [f"{SUBDIR}/queues.conf"],
        "ari.conf": [f"{SUBDIR}/ari.conf"],
    }
    if not http_on:
        includes["http.conf"] = [f"{SUBDIR}/http.conf"]
    if options.test_parties:
        includes["extensions.conf"].append(f"{SUBDIR}/extensions-test.conf")
        includes["queues.conf"].append(f"{SUBDIR}/queues-test.conf")
        includes["pjsip.conf"] = [f"{SUBDIR}/pjsip-test-parties.conf"]
    for name, wanted in includes.items():
        target = _operator_file(etc, name)
        present = _included(etc, name)
        missing = [include for include in wanted if include not in present]
        if missing:
            _add(plan, target, _with_includes(_read(target), missing), secret=False)
    # Reloading what did not change costs nothing; a half-reloaded configuration would.
    plan.reloads = [RELOADS[name] for name in includes] if plan.changes else []
    plan.missing_secrets = sorted(set(plan.missing_secrets))
    needed = NEEDED_MODULES + (TEST_PARTY_MODULES if options.test_parties else ())
    plan.warnings += module_warnings(etc / "modules.conf", needed)
    return plan


def _add(plan: Plan, path: Path, new: str, *, secret: bool) -> None:
    old = _read(path)
    if old == new:
        plan.unchanged.append(path)
    else:
        plan.changes.append(Change(path, old, new, secret))


def _check_secret(name: str, value: str) -> None:
    # Asterisk cuts a value at ";" (a comment) and trims outer blanks.
    if re.search(r"[;\r\n]", value) or value != value.strip():
        raise InstallError(
            f'{name} has a ";", a line break or outer blanks, which an Asterisk config file '
            "cannot hold; nothing was written"
        )


def _read(path: Path) -> str | None:
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise InstallError(f"cannot read {path}: {error}") from None


def _operator_file(etc: Path, name: str) -> Path:
    """Where the include goes: FreePBX's `<name>_custom.conf` when it exists (FreePBX
    rewrites its own files), else the file itself."""
    custom = etc / name.replace(".conf", "_custom.conf")
    return custom if custom.is_file() else etc / name


def _lines(etc: Path, path: Path, seen: set[Path] | None = None) -> Iterable[tuple[Path, str]]:
    """The operator's lines of `path` and the files it includes (not callrec's own),
    comments stripped, as Asterisk reads them (includes relative to `etc`)."""
    seen = set() if seen is None else seen
    if path in seen or not path.is_file():
        return
    seen.add(path)
    for raw in (_read(path) or "").splitlines():
        line = re.split(r"(?<!\\);", raw, maxsplit=1)[0].strip()
        include = _INCLUDE.match(line)
        if include:
            name = include.group(1)
            if not name.startswith(f"{SUBDIR}/"):
                target = Path(name) if name.startswith("/") else etc / name
                for found in sorted(target.parent.glob(target.name)):
                    yield from _lines(etc, found, seen)
            continue
        if line:
            yield path, line


def _included(etc: Path, name: str) -> set[str]:
    """The callrec/ files `name` (or its FreePBX custom file) already includes."""
    present: set[str] = set()
    for path in {etc / name, _operator_file(etc, name)}:
        for raw in (_read(path) or "").splitlines() if path.is_file() else []:
            include = _INCLUDE.match(raw)
            if include:
                present.add(include.group(1))
    return present


def _sections(etc: Path, name: str) -> set[str]:
    found: set[str] = set()
    for path in {etc / name, _operator_file(etc, name)}:
        for _, line in _lines(etc, path):
            header = _SECTION.match(line)
            if header:
                found.add(header.group(1))
    return found


def _refuse_name_clashes(etc: Path, policy: Policy, options: Options) -> None:
    clashes = []
    for queue in sorted(set(queues(policy)) & _sections(etc, "queues.conf")):
        clashes.append(f"queues.conf already has a queue [{queue}]")
    contexts = sorted(c for c in _sections(etc, "extensions.conf") if c.startswith("callrec-"))
    clashes += [f"extensions.conf already has a context [{context}]" for context in contexts]
    if options.ari_user in _sections(etc, "ari.conf"):
        clashes.append(f"ari.conf already has a section [{options.ari_user}]")
    if clashes:
        raise InstallError(
            "; ".join(clashes) + ": rename the line's queue ([lines.<name>] queue) or the "
            "operator's section; nothing was written"
        )


def _http_state(etc: Path) -> tuple[bool, bool]:
    """Whether the operator's HTTP server is on, and whether http.conf has a [general]."""
    section, enabled, general = "", False, False
    for _, line in _lines(etc, etc / "http.conf"):
        header = _SECTION.match(line)
        if header:
            section = header.group(1)
            general = general or section == "general"
            continue
        key, _, value = line.partition("=")
        if section == "general" and key.strip() == "enabled":
            enabled = value.strip().lower() in _TRUE
    return enabled, general


def _with_includes(old: str | None, includes: list[str]) -> str:
    text = old or ""
    if text and not text.endswith("\n"):
        text += "\n"
    if text:
        text += "\n"
    text += "; callrec (callrec asterisk install): its files, generated from its configuration\n"
    return text + "".join(f"#include {include}\n" for include in includes)


def module_warnings(path: Path, needed: Iterable[str]) -> list[str]:
    """The modules callrec needs that this modules.conf keeps from loading (noload'ed with
    autoload on, or not loaded with autoload off). Never changes the file."""
    if not path.is_file():
        return [f"{path.name}: not found; not checked"]
    autoload, load, noload, section = False, set(), set(), ""
    for _, line in _lines(path.parent, path):
        header = _SECTION.match(line)
        if header:
            section = header.group(1)
            continue
        if section != "modules":
            continue
        parts = re.split(r"\s*(?:=>|=)\s*", line, maxsplit=1)
        if len(parts) != 2:
            continue
        key, value = parts[0].strip(), parts[1].strip()
        module = value.removesuffix(".so")
        if key == "autoload":
            autoload = value.lower() in _TRUE
        elif key in ("load", "preload", "require", "preload-require"):
            load.add(module)
        elif key == "noload":
            noload.add(module)
    if autoload:
        blocked = [module for module in needed if module in noload]
        how = "noload"
    else:
        blocked = [module for module in needed if module not in load]
        how = "not loaded (autoload = no)"
    if not blocked:
        return []
    return [
        f"modules.conf: callrec needs {', '.join(blocked)}, {how} there; callrec does not "
        "change modules.conf: load them yourself"
    ]


def diff(plan: Plan) -> str:
    """A unified diff of every change, passwords masked."""
    out: list[str] = []
    for change in plan.changes:
        relative = change.path.relative_to(plan.etc)
        old = _masked(change.old or "", change.secret).splitlines(keepends=True)
        new = _masked(change.new, change.secret).splitlines(keepends=True)
        out += difflib.unified_diff(
            old,
            new,
            fromfile=f"a/{relative}" if change.old is not None else "/dev/null",
            tofile=f"b/{relative}",
        )
    return "".join(out)


def _masked(text: str, secret: bool) -> str:
    if not secret:
        return text
    lines = []
    for line in text.splitlines(keepends=True):
        match = _PASSWORD.match(line.rstrip("\n"))
        if match and not match.group(2).startswith("@"):
            line = match.group(1) + "********\n"
        lines.append(line)
    return "".join(lines)


def apply(plan: Plan, now: datetime | None = None) -> list[str]:
    """Carry out the plan: back up, then write each file atomically. Returns one line per
    file for the operator."""
    if plan.missing_secrets:
        raise InstallError(
            f"{', '.join(plan.missing_secrets)} not set: callrec's Asterisk files need it "
            "(CALLREC_ARI_PASSWORD or ari.password_file; the test parties' from the "
            "environment); nothing was written"
        )
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    report = []
    group = plan.etc.stat().st_gid
    for change in plan.changes:
        change.path.parent.mkdir(mode=0o750, exist_ok=True)
        _own(change.path.parent, group)
        if change.old is not None:
            backup = change.path.with_name(f"{change.path.name}.callrec-backup-{stamp}")
            backup.write_bytes(change.path.read_bytes())
            backup.chmod(change.path.stat().st_mode & 0o7777)
            report.append(f"changed {change.path} (backup {backup.name})")
            mode = change.path.stat().st_mode & 0o7777
        else:
            report.append(f"created {change.path}")
            mode = 0o640
        if change.secret:
            mode &= 0o7770
        temporary = change.path.with_name(f".{change.path.name}.callrec-new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(change.new)
        temporary.chmod(mode)
        if change.old is None:
            _own(temporary, group)
        temporary.replace(change.path)
    return report


def _own(path: Path, group: int) -> None:
    """New files take the configuration directory's group (Asterisk reads them as it)."""
    if os.geteuid() == 0:
        os.chown(path, -1, group)


def reload(asterisk: str, commands: Iterable[str]) -> list[str]:
    """Run each reload through the Asterisk CLI (`asterisk -rx`)."""
    done = []
    for command in commands:
        try:
            result = subprocess.run(
                [asterisk, "-rx", command],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise InstallError(f"{asterisk} -rx {command!r} failed: {error}") from None
        if result.returncode != 0:
            why = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise InstallError(
                f"{asterisk} -rx {command!r} failed (exit {result.returncode}): {why[0]}; the "
                "files are installed, reload Asterisk yourself"
            )
        done.append(f"reloaded: {command}")
    return done


def command(settings: Settings, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """`callrec asterisk install`: print the plan (a diff with --dry-run) or carry it out."""
    options = Options(
        mode=args.mode,
        did_forms=settings.asterisk.did_forms,
        caller_id_form=settings.asterisk.caller_id_form,
        test_parties=args.test_parties,
        ari_user=settings.ari.user,
        ari_password=settings.ari.password or None,
    )
    plan = plan_install(args.etc, settings.policy, options, env=env)
    if not args.dry_run and plan.missing_secrets:
        apply(plan)  # refuses, with the reason, before any warning
    for warning in plan.warnings:
        print(f"callrec: warning: {warning}", file=sys.stderr)
    if args.dry_run:
        sys.stdout.write(diff(plan))
        if plan.missing_secrets:
            print(
                f"callrec: {', '.join(plan.missing_secrets)} not set: an install would refuse",
                file=sys.stderr,
            )
        print(f"{len(plan.changes)} file(s) would change; nothing was written", file=sys.stderr)
        return 0
    for line in apply(plan):
        print(line)
    if not plan.changes:
        print(f"nothing to change in {args.etc}")
    if args.reload and plan.reloads:
        for line in reload(args.asterisk, plan.reloads):
            print(line)
    elif plan.reloads:
        print("reload Asterisk to use them: " + "; ".join(plan.reloads))
    return 0
