"""The simulated dialplan against `asterisk-conf/`: every priority of the ARI-mode and the
FastAGI-mode contexts (application and label, in order), the DIDs, the globals and the
queues' settings agree, so the simulator cannot drift from what a real Asterisk would run.
Also the pattern matcher."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agi.simpbx.dialplan import Dialplan, callrec_dialplan, extension_pattern

CONF = Path(__file__).resolve().parents[1] / "asterisk-conf"
MIRRORED = (
    "callrec-inbound",
    "callrec-callback",
    "callrec-ari-inbound",
    "callrec-clear",
    "callrec-record",
    "callrec-agent-connect",
    "callrec-ari-callback",
    "callrec-callee",
    "callrec-hangup",
    "callrec-agi-inbound",
    "callrec-agi-check",
    "callrec-agi-callback",
    "callrec-agi-callee",
    "callrec-agi-hangup",
)
# The one extension the simulator leaves out: the landing place of res_stasis' nested PBX.
NOT_MIRRORED = {("callrec-callee", "nested")}

Steps = list[tuple[int, str | None, str]]  # (priority, label, application)

pytestmark = pytest.mark.skipif(
    not (CONF / "extensions.conf").exists(), reason="asterisk-conf/ is not in this checkout"
)


def _conf_lines(name: str) -> list[str]:
    """The file's lines without comments, its #includes (relative to the configuration
    directory, as Asterisk reads them) inlined."""
    lines = []
    for raw in (CONF / name).read_text(encoding="utf-8").splitlines():
        line = raw.split(";", 1)[0].strip()
        if line.startswith("#include"):
            lines += _conf_lines(line.split(None, 1)[1].strip('"'))
        elif line:
            lines.append(line)
    return lines


def parse_extensions(text_lines: list[str]) -> tuple[dict[str, dict[str, Steps]], dict[str, str]]:
    """extensions.conf as contexts -> extensions -> steps, and its [globals]."""
    contexts: dict[str, dict[str, Steps]] = {}
    globals_: dict[str, str] = {}
    context = exten = ""
    number = 0
    for line in text_lines:
        if line.startswith("["):
            context = line[1 : line.index("]")]
            continue
        if context == "globals" and "=" in line:
            key, _, value = line.partition("=")
            globals_[key.strip()] = value.strip()
            continue
        match = re.match(r"(exten|same)\s*=>\s*(.*)", line)
        if match is None:
            continue
        body = match.group(2)
        if match.group(1) == "exten":
            exten, body = body.split(",", 1)
        where, app_call = body.split(",", 1)
        label_match = re.fullmatch(r"(\w+)(?:\((\w+)\))?", where.strip())
        assert label_match is not None, line
        step, label = label_match.groups()
        number = number + 1 if step == "n" else int(step)
        app = app_call.split("(", 1)[0].strip()
        contexts.setdefault(context, {}).setdefault(exten.strip(), []).append((number, label, app))
    return contexts, globals_


def sim_steps(plan: Dialplan, context: str, exten: str) -> Steps | None:
    priorities = plan.contexts.get(context, {}).get(exten)
    if priorities is None and exten.startswith("_"):
        # The simulator takes any dialed text (scenario files write numbers with spaces).
        priorities = plan.contexts.get(context, {}).get("_.")
    if priorities is None:
        return None
    return [(n, p.label, p.app) for n, p in enumerate(priorities, start=1)]


def test_default_dialplan_follows_extensions_conf() -> None:
    """Each mirrored extension runs the same applications, with the same labels, in order."""
    contexts, _ = parse_extensions(_conf_lines("extensions.conf"))
    plan = callrec_dialplan()
    compared = 0
    for context in MIRRORED:
        assert context in contexts, f"{context} is gone from extensions.conf"
        for exten, steps in contexts[context].items():
            if (context, exten) in NOT_MIRRORED:
                continue
            assert sim_steps(plan, context, exten) == steps, f"{context},{exten}"
            compared += 1
    assert compared >= len(MIRRORED) + 10, "the DIDs of both lines are compared too"


def test_globals_and_queues_follow_the_conf() -> None:
    """The trunk and dial timeout globals, and each queue's member, setinterfacevar and
    membergosub, are those of extensions.conf and queues.conf."""
    _, globals_ = parse_extensions(_conf_lines("extensions.conf"))
    plan = callrec_dialplan()
    for name, value in plan.globals.items():
        assert globals_[name] == value, name
    settings: dict[str, dict[str, str]] = {}
    section = ""
    for line in _conf_lines("queues.conf"):
        if line.startswith("["):
            section = line[1 : line.index("]")]
            if line.endswith("](+)"):  # adds to the section of that name
                continue
            inherited = re.search(r"\]\((\w[\w-]*)\)", line)
            settings[section] = dict(settings.get(inherited.group(1), {})) if inherited else {}
            continue
        key, _, value = line.replace("=>", "=").partition("=")
        settings[section][key.strip()] = value.strip()
    for queue, simulated in plan.queues.items():
        real = settings[queue]
        assert real["member"].split(",")[0] == simulated.member
        assert real["member"].split(",")[2] == simulated.member_name
        assert (real.get("setinterfacevar") == "yes") == simulated.setinterfacevar
        assert real.get("membergosub", "") == simulated.membergosub


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("_X.", ["040404040", "12", "04a"], ["1", "+386"]),
        ("_[0-9+].", ["+38640404040", "040404040"], ["+", "abc"]),
        ("_0[1-9]XX!", ["0123", "01234"], ["0012", "012"]),
        ("_N", ["2", "9"], ["1", "0"]),
        ("_.", ["040 40 40 40", "x"], [""]),
    ],
)
def test_extension_patterns_match_like_asterisk(
    pattern: str, matches: list[str], misses: list[str]
) -> None:
    """Asterisk's pattern letters X Z N, ranges, `.` (one or more) and `!` (zero or more)."""
    compiled = re.compile(extension_pattern(pattern))
    assert all(compiled.fullmatch(text) for text in matches)
    assert not any(compiled.fullmatch(text) for text in misses)
