"""asterisk-conf/: the dialplan and the configuration a real Asterisk loads.

The dialplan is parsed here the way pbx_config reads it (contexts, extensions, priorities,
labels, #include), then checked: every context, label and sound it names exists, every DID
of the policy reaches Stasis with its line's queue, only the controller's four variables
decide anything, no caller ID reaches MixMonitor, and the recording routine, evaluated with
Asterisk's REGEX semantics, records exactly when Stasis succeeded and CALLREC_RECORD is
"yes" with a plain spool path.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from reference import SHARED, absent

from callrec.asterisk_files import Options, generate
from callrec.config import load_settings
from flows.numbers import normalise
from flows.policy import DEFAULT_LINES, Policy
from prompts.catalog import FORMATS, sounds_dir

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "asterisk-conf"
CONTROLLER_SETS = {
    "CALLREC_RECORD", "CALLREC_FILE", "CALLREC_CALL_ID", "CALLREC_NOTICE", "CALLREC_CALLBACK_CID"
}  # fmt: skip
MODES = ("ari", "agi")  # the values of CALLREC_MODE, each with its own contexts
SPOOL_FILE = re.compile(r"^/[-A-Za-z0-9/_.]+[.](wav|wav16)$")  # what the controller writes
# Each module's AST_MODULE_INFO (.requires, .optional_modules, builtin) at the Asterisk
# commit the live tests ran on, read from its source.
ASTERISK_MODULES = SHARED / "asterisk-modules.json"
TRUNK_EXAMPLE = CONF / "pjsip-trunk.conf.example"
# The controller's documented capacity (README, Benchmarks: 1,000 calls alive at once), and
# the RTP ports one bridged call holds: two legs, each an RTP and an RTCP port.
CAPACITY_CALLS = 1000
RTP_PORTS_PER_CALL = 4


# --- a small reader for extensions.conf ------------------------------------------------


@dataclass(frozen=True)
class Step:
    context: str
    exten: str
    priority: int
    label: str | None
    app: str
    data: str
    where: str  # file:line


@dataclass
class Dialplan:
    contexts: dict[str, list[Step]] = field(default_factory=dict)
    general: dict[str, str] = field(default_factory=dict)
    globals: dict[str, str] = field(default_factory=dict)

    def steps(self) -> list[Step]:
        return [step for steps in self.contexts.values() for step in steps]

    def extension(self, context: str, exten: str) -> list[Step]:
        """The priorities `exten` runs in `context`: its own, or the first pattern's."""
        steps = self.contexts[context]
        literal = [step for step in steps if step.exten == exten]
        if literal:
            return literal
        for pattern in dict.fromkeys(step.exten for step in steps if step.exten.startswith("_")):
            if matches(pattern, exten):
                return [step for step in steps if step.exten == pattern]
        return []


_LINE = re.compile(r"^(exten|same)\s*=>?\s*(.*)$")
_APP = re.compile(r"^([A-Za-z]\w*)\((.*)\)$")


def strip_comment(line: str) -> str:
    return re.split(r"(?<!\\);", line, maxsplit=1)[0].rstrip()


def read_dialplan(path: Path, plan: Dialplan | None = None, root: Path | None = None) -> Dialplan:
    """extensions.conf and what it includes; as Asterisk does, an #include names a file
    relative to the configuration directory `root` (default: the file's own)."""
    plan = plan or Dialplan()
    root = root or path.parent
    section = None
    last: Step | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{path.name}:{number}"
        line = strip_comment(raw).strip()
        if not line:
            continue
        if line.startswith("#include"):
            read_dialplan(root / line.split(None, 1)[1].strip('"'), plan, root)
            continue
        if line.startswith("["):
            section = line[1 : line.index("]")]
            if section not in ("general", "globals"):
                assert section not in plan.contexts, f"{where}: context {section} twice"
                plan.contexts[section] = []
            last = None
            continue
        assert section is not None, f"{where}: outside a section"
        if section in ("general", "globals"):
            name, _, value = line.partition("=")
            target = plan.general if section == "general" else plan.globals
            target[name.strip()] = value.strip()
            continue
        match = _LINE.match(line)
        assert match, f"{where}: not an exten/same line: {line}"
        kind, rest = match.groups()
        if kind == "exten":
            exten, priority_text, app_text = rest.split(",", 2)
        else:
            assert last is not None, f"{where}: `same` without an extension"
            exten = last.exten
            priority_text, app_text = rest.split(",", 1)
        label_match = re.fullmatch(r"(\w+|n)(?:\((\w+)\))?", priority_text.strip())
        assert label_match, f"{where}: bad priority {priority_text}"
        number_text, label = label_match.groups()
        if number_text == "n":
            assert last is not None and last.exten == exten, f"{where}: n without a priority"
            priority = last.priority + 1
        else:
            priority = int(number_text)
        app_match = _APP.match(app_text.strip())
        assert app_match, f"{where}: not an application call: {app_text}"
        app, data = app_match.groups()
        step = Step(section, exten.strip(), priority, label, app, data, where)
        plan.contexts[section].append(step)
        last = step
    return plan


def matches(pattern: str, exten: str) -> bool:
    """Asterisk's extension pattern match (X, Z, N, [..], . and !)."""
    if not pattern.startswith("_"):
        return pattern == exten
    regex = ""
    body = pattern[1:]
    index = 0
    while index < len(body):
        char = body[index]
        if char == "[":
            end = body.index("]", index)
            regex += "[" + re.escape(body[index + 1 : end]).replace("\\-", "-") + "]"
            index = end + 1
            continue
        regex += {"X": "[0-9]", "Z": "[1-9]", "N": "[2-9]", ".": ".+", "!": ".*"}.get(
            char.upper(), re.escape(char)
        )
        index += 1
    return re.fullmatch(regex, exten) is not None


def config_lines(path: Path, root: Path | None = None) -> list[str]:
    """The lines Asterisk reads from `path`: comments stripped, `#include`d files inlined,
    relative to the configuration directory `root` (a missing one fails, as it would fail
    Asterisk's load)."""
    root = root or path.parent
    lines: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = strip_comment(raw).strip()
        if line.startswith("#include"):
            lines += config_lines(root / line.split(None, 1)[1].strip('"'), root)
        elif line:
            lines.append(line)
    return lines


def read_ini(path: Path) -> list[tuple[str, dict[str, list[str]]]]:
    """Sections of an Asterisk config file and its includes in order (names may repeat, as
    in pjsip.conf); `(!)` templates, `(template)` inheritance and `(+)` additions to an
    earlier section are resolved."""
    sections: list[tuple[str, dict[str, list[str]]]] = []
    templates: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in config_lines(path):
        header = re.fullmatch(r"\[([^\]]+)\](?:\(([^)]*)\))?", line)
        if header:
            name, options = header.groups()
            if options == "+":  # config.c: the category must exist already
                current = next(v for n, v in reversed(sections) if n == name)
                continue
            current = {}
            for option in (options or "").split(","):
                if option and option != "!":
                    current.update({k: list(v) for k, v in templates[option].items()})
            if options and "!" in options.split(","):
                templates[name] = current
            else:
                sections.append((name, current))
            continue
        assert current is not None, f"{path.name}: {line} outside a section"
        key, _, value = re.split(r"\s*(=>|=)\s*", line, maxsplit=1)
        current.setdefault(key, []).append(value)
    return sections


def section(path: Path, name: str, kind: str | None = None) -> dict[str, list[str]]:
    found = [
        values
        for section_name, values in read_ini(path)
        if section_name == name and (kind is None or values.get("type") == [kind])
    ]
    assert len(found) == 1, f"{path.name}: [{name}] {kind or ''} found {len(found)} times"
    return found[0]


PLAN = read_dialplan(CONF / "extensions.conf")


def expand(text: str, mode: str) -> str:
    return text.replace("${CALLREC_MODE}", mode)


def split_args(data: str) -> list[str]:
    """Application arguments split at top-level commas (parentheses and ${} nest)."""
    parts, depth, current = [], 0, ""
    for char in data:
        if char in "({":
            depth += 1
        elif char in ")}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


# --- references resolve --------------------------------------------------------------


def goto_targets(step: Step) -> list[tuple[str, str, str]]:
    """(context, exten, priority-or-label) of every jump a step can make."""
    targets: list[str] = []
    if step.app in ("Goto", "Gosub"):
        targets.append(step.data.split("(", 1)[0])
    elif step.app == "GotoIf":
        branches = step.data.split("?", 1)[1]
        targets.extend(branch for branch in branches.split(":") if branch)
    elif step.app == "ExecIf":
        for branch in step.data.split("?", 1)[1].split(":"):
            if branch.startswith(("Goto(", "Gosub(")):
                targets.append(branch[branch.index("(") + 1 : -1])
    elif step.app == "Set" and step.data.startswith("CHANNEL(hangup_handler_push)="):
        targets.append(step.data.split("=", 1)[1])
    resolved = []
    for target in targets:
        parts = target.split(",")
        if len(parts) == 1:
            resolved.append((step.context, step.exten, parts[0]))
        elif len(parts) == 2:
            resolved.append((step.context, parts[0], parts[1]))
        else:
            resolved.append((parts[0], parts[1], parts[2]))
    return resolved


def dial_subroutines(step: Step) -> list[str]:
    return re.findall(r"U\(([\w-]+)\^", step.data) if step.app == "Dial" else []


def test_every_jump_lands_on_an_existing_priority_or_label() -> None:
    """Every Goto/GotoIf/Gosub/ExecIf branch and hangup handler names a context, extension
    and priority or label that exist (for both values of CALLREC_MODE)."""
    checked = 0
    for step in PLAN.steps():
        for mode in MODES:
            for context, exten, target in goto_targets(step):
                context, exten = expand(context, mode), expand(exten, mode)
                assert context in PLAN.contexts, f"{step.where}: no context {context}"
                if exten.startswith("${"):  # ${EXTEN}: the same DID, which the pattern takes
                    exten_steps = [s for s in PLAN.contexts[context] if s.exten.startswith("_")]
                else:
                    exten_steps = PLAN.extension(context, exten)
                assert exten_steps, f"{step.where}: no extension {exten} in {context}"
                if target.isdigit():
                    assert int(target) in {s.priority for s in exten_steps}, step.where
                else:
                    assert target in {s.label for s in exten_steps}, f"{step.where}: {target}"
                checked += 1
    assert checked > 40


def test_dial_subroutines_and_queue_gosub_exist() -> None:
    """Dial's U() routines and queues.conf's membergosub are contexts with an `s`
    extension that ends in Return()."""
    routines = {name for step in PLAN.steps() for name in dial_subroutines(step)}
    assert routines == {"callrec-callee", "callrec-agi-callee"}
    queues = read_ini(CONF / "queues.conf")
    routines |= {values["membergosub"][0] for name, values in queues if "membergosub" in values}
    assert "callrec-agent-connect" in routines
    for name in routines:
        steps = PLAN.extension(name, "s")
        assert steps, f"{name} has no s extension"
        assert any(step.app == "Return" for step in steps), name


def test_endpoint_contexts_exist() -> None:
    """The contexts pjsip.conf sends the test softphones to are in the dialplan."""
    contexts = {
        values["context"][0]
        for name, values in read_ini(CONF / "pjsip.conf")
        if values.get("type") == ["endpoint"] and "context" in values
    }
    assert contexts == {"callrec-inbound", "callrec-callback"}
    assert contexts <= set(PLAN.contexts)


def test_every_sound_exists_in_every_format() -> None:
    """Every sound the dialplan plays and every prompt of the default lines is in
    prompts/sl/ as wav, sln16, ulaw and alaw."""
    sounds = {step.data for step in PLAN.steps() if step.app == "Playback"}
    sounds |= {
        prompt
        for line in DEFAULT_LINES
        for prompt in (line.prompts.notice, line.prompts.invalid_key, line.prompts.ask_again)
        if prompt
    }
    assert len(sounds) >= 4
    for sound in sounds:
        for fmt in FORMATS:
            path = sounds_dir() / "sl" / f"{sound}.{fmt}"
            assert path.is_file(), f"{path} is missing"


# --- the lines ----------------------------------------------------------------------


def test_every_did_of_the_policy_reaches_stasis_with_its_queue() -> None:
    """Each number of each default line, national and E.164, enters the flow of both modes
    with its line's queue; no other number is routed."""
    routed: dict[str, str] = {}
    for exten in dict.fromkeys(step.exten for step in PLAN.contexts["callrec-inbound"]):
        steps = PLAN.extension("callrec-inbound", exten)
        queue = [s.data.split("=", 1)[1] for s in steps if s.data.startswith("CALLREC_QUEUE=")]
        assert len(queue) == 1, f"{exten}: no single CALLREC_QUEUE"
        assert any(
            s.app == "Goto" and s.data == "callrec-${CALLREC_MODE}-inbound,${EXTEN},1"
            for s in steps
        ), exten
        routed[exten] = queue[0]
    for line in DEFAULT_LINES:
        for number in line.numbers:
            national = "0" + number.removeprefix("+386")
            for form in (number, national):
                assert routed.get(form) == line.name, f"{form} does not reach {line.name}"
    for exten, queue_name in routed.items():
        owner = next(line for line in DEFAULT_LINES if normalise(exten) in line.numbers)
        assert owner.name == queue_name, exten

    expected = {
        "ari": "Stasis(callrec,inbound,${EXTEN})",
        "agi": "AGI(agi://127.0.0.1:4573/inbound,${EXTEN})",
    }
    for mode, entry in expected.items():
        for exten in routed:
            steps = PLAN.extension(f"callrec-{mode}-inbound", exten)
            calls = [f"{s.app}({s.data})" for s in steps]
            assert entry in calls, f"{mode}: {exten}"
            queue_at = calls.index("Queue(${CALLREC_QUEUE})")
            assert calls.index(entry) < queue_at, f"{mode}: {exten} queues before deciding"
            assert "Set(CHANNEL(hangup_handler_push)" in " ".join(calls[: calls.index(entry)])


def test_queues_exist_for_every_line_and_mark_the_agent() -> None:
    """queues.conf has a queue per line; each sets MEMBERINTERFACE and runs the connect
    routine, and lets callers wait even with no agent (refusing must cost nothing)."""
    queues = dict(read_ini(CONF / "queues.conf"))
    for line in DEFAULT_LINES:
        queue = queues[line.name]
        assert queue["membergosub"] == ["callrec-agent-connect"]
        assert queue["setinterfacevar"] == ["yes"]
        assert queue["joinempty"] == ["yes"]
    connect = PLAN.extension("callrec-agent-connect", "s")
    assert connect[0].app == "Set"
    assert connect[0].data.startswith("MASTER_CHANNEL(CALLREC_AGENT)=")


# --- variables and caller ID ---------------------------------------------------------


def test_only_the_controller_contract_variables_come_from_outside() -> None:
    """Every CALLREC_ variable the dialplan reads is one of the four the controller sets,
    or is set by the configuration itself (dialplan, globals, an endpoint's set_var)."""
    text = "\n".join(f"{s.app}({s.data})" for s in PLAN.steps())
    read = set(re.findall(r"\$\{(CALLREC_\w+)\}", text))
    read |= set(re.findall(r"INC\((CALLREC_\w+)\)", text))
    set_here = set(PLAN.globals)
    for step in PLAN.steps():
        if step.app == "Set":
            name = step.data.split("=", 1)[0]
            value = step.data.split("=", 1)[1]
            master = re.fullmatch(r"MASTER_CHANNEL\((\w+)\)", name)
            if value:
                set_here.add(master.group(1) if master else name)
    for _, values in read_ini(CONF / "pjsip.conf"):
        set_here |= {value.split("=", 1)[0] for value in values.get("set_var", [])}
    assert read - set_here - CONTROLLER_SETS == set()
    assert read >= CONTROLLER_SETS


def test_the_dialplan_never_decides_to_record_by_itself() -> None:
    """The dialplan sets the controller's variables only to nothing or to "no"."""
    for step in PLAN.steps():
        if step.app == "Set":
            name, _, value = step.data.partition("=")
            if name in CONTROLLER_SETS:
                assert value in ("", "no"), step.where


def test_controller_variables_are_cleared_before_the_controller_runs() -> None:
    """Each flow clears the controller's variables before Stasis/AGI, so nothing a channel
    brings along can decide to record."""
    clear = PLAN.extension("callrec-clear", "s")
    cleared = {s.data.removesuffix("=") for s in clear if s.app == "Set" and s.data.endswith("=")}
    assert cleared >= CONTROLLER_SETS
    for context in ("callrec-ari-inbound", "callrec-ari-callback", "callrec-agi-inbound",
                    "callrec-agi-callback", "callrec-callee", "callrec-agi-callee"):  # fmt: skip
        steps = PLAN.contexts[context]
        calls = [f"{s.app}({s.data})" for s in steps]
        entry = next(i for i, s in enumerate(steps) if s.app in ("Stasis", "AGI", "ExecIf"))
        assert "Gosub(callrec-clear,s,1)" in calls[:entry], context


def test_caller_id_never_reaches_mixmonitor_or_a_file_name() -> None:
    """MixMonitor is only ever given the controller's file with option b, and no line of the
    configuration reads the caller ID."""
    monitors = [s for s in PLAN.steps() if s.app == "MixMonitor"]
    assert monitors
    assert all(s.data == "${CALLREC_FILE},b" for s in monitors)
    for path in CONF.glob("**/*.conf"):
        text = "\n".join(strip_comment(line) for line in path.read_text("utf-8").splitlines())
        assert not re.search(r"CALLERID|CONNECTEDLINE|CALLERIDNUM", text), path.name


def test_no_expression_syntax_in_the_dialplan() -> None:
    """No $[...]: Asterisk's expression parser runs any function named inside it."""
    for step in PLAN.steps():
        assert "$[" not in step.data, step.where


def test_agi_mode_never_starts_mixmonitor_itself() -> None:
    """In FastAGI mode the server EXECs MixMonitor; the dialplan only stops one when the AGI
    failed."""
    agi_contexts = [c for c in PLAN.contexts if c.startswith("callrec-agi-")]
    assert len(agi_contexts) == 5
    for context in agi_contexts:
        for step in PLAN.contexts[context]:
            assert step.app != "MixMonitor", step.where
            assert not (step.app == "Gosub" and step.data.startswith("callrec-record")), step.where


# --- every recorded leg's end reaches the controller -------------------------------------

RECORDING_ROUTES = ("inbound", "callback", "callee")  # FastAGI routes that EXEC MixMonitor


def starts_recording(step: Step, monitor_routines: set[str]) -> bool:
    """Whether this step can start MixMonitor: the application itself, a Gosub into a
    routine that runs it, or an AGI on a route whose server EXECs it (FastAGI mode)."""
    if step.app == "MixMonitor":
        return True
    if step.app == "Gosub":
        return step.data.split(",", 1)[0] in monitor_routines
    if step.app == "AGI":
        route = step.data.split(",", 1)[0].rsplit("/", 1)[-1]
        return route in RECORDING_ROUTES
    return False


def reports_the_end(steps: list[Step]) -> str | None:
    """How the leg's end reaches the controller, given the steps before the recording
    starts: ARI's Stasis (the controller subscribes to the channel before it lets it record,
    and sees ChannelDestroyed), or a pushed hangup handler whose AGI reports the call id."""
    calls = " ".join(f"{s.app}({s.data})" for s in steps)
    if "Stasis(callrec," in calls:
        return "stasis"
    for step in steps:
        if step.app == "Set" and step.data.startswith("CHANNEL(hangup_handler_push)="):
            handler = step.data.split("=", 1)[1].split(",")[0]
            for routine in PLAN.extension(handler, "s"):
                if routine.app == "AGI" and re.search(
                    r"/hangup,\$\{FILTER\(0-9a-f,\$\{CALLREC_CALL_ID\}\)\}", routine.data
                ):
                    return "hangup handler"
    return None


def test_every_context_that_can_record_reports_the_legs_end() -> None:
    """In both modes, each context that can start MixMonitor (itself, through a routine, or
    through the FastAGI server) first makes sure the controller learns when the leg ends:
    otherwise its recording would stay in the spool, outside retention and withdrawal."""
    monitor_routines = {s.context for s in PLAN.steps() if s.app == "MixMonitor"}
    assert monitor_routines == {"callrec-record"}
    checked: dict[str, str] = {}
    for context, steps in PLAN.contexts.items():
        if context in monitor_routines:
            continue  # a routine: its callers are checked
        for exten in dict.fromkeys(step.exten for step in steps):
            ordered = sorted(PLAN.extension(context, exten), key=lambda s: s.priority)
            for index, step in enumerate(ordered):
                if starts_recording(step, monitor_routines):
                    how = reports_the_end(ordered[:index])
                    assert how is not None, (
                        f"{step.where}: {context} records a leg whose end nobody reports"
                    )
                    checked[context] = how
    assert checked == {
        "callrec-ari-inbound": "stasis",
        "callrec-ari-callback": "stasis",
        "callrec-callee": "stasis",
        "callrec-agi-inbound": "hangup handler",
        "callrec-agi-callback": "hangup handler",
        "callrec-agi-callee": "hangup handler",
    }


# --- the recording decision, evaluated --------------------------------------------------


def substitute(text: str, variables: dict[str, str]) -> str:
    """${VAR}, ${LEN(...)} and ${REGEX("re" ...)} as Asterisk expands them: innermost first,
    and a variable's value is inserted as it is, never expanded again."""
    values: list[str] = []

    def restore(part: str) -> str:
        return re.sub("\x00(\\d+)\x00", lambda m: values[int(m.group(1))], part)

    def inner(match: re.Match[str]) -> str:
        body = match.group(1)
        regex = re.fullmatch(r'REGEX\("([^"]*)" (.*)\)', body, re.DOTALL)
        if regex:
            return "1" if re.search(regex.group(1), restore(regex.group(2))) else "0"
        length = re.fullmatch(r"LEN\((.*)\)", body)
        if length:
            return str(len(restore(length.group(1))))
        kept = re.fullmatch(r"FILTER\(([^,]*),(.*)\)", body, re.DOTALL)
        if kept:
            allowed = f"[{re.escape(kept.group(1)).replace(chr(92) + '-', '-')}]"
            return "".join(c for c in restore(kept.group(2)) if re.fullmatch(allowed, c))
        choice = re.fullmatch(r"IF\((.*)\)", body, re.DOTALL)
        if choice:  # func_logic.c: the condition up to "?", then branches split at ":"
            condition, _, branches = restore(choice.group(1)).partition("?")
            true, false = ([*branches.split(":"), ""])[:2]
            return true if condition.strip() not in ("", "0") else false
        assert re.fullmatch(r"\w+", body), f"cannot evaluate ${{{body}}}"
        values.append(variables.get(body, ""))
        return f"\x00{len(values) - 1}\x00"

    previous = None
    while previous != text:
        previous = text
        text = re.sub(r"\$\{((?:[^${}]|\$(?!\{))*)\}", inner, text)
    assert "${" not in text, f"cannot evaluate {text}"
    return restore(text)


def run_routine(context: str, variables: dict[str, str]) -> list[str]:
    """The applications `context`'s s extension runs (GotoIf followed) until Return()."""
    steps = PLAN.extension(context, "s")
    by_priority = {s.priority: s for s in steps}
    labels = {s.label: s.priority for s in steps if s.label}
    priority, ran = 1, []
    for _ in range(50):
        step = by_priority[priority]
        data = substitute(step.data, variables)
        if step.app == "GotoIf":
            condition, branches = data.split("?", 1)
            true, _, false = branches.partition(":")
            target = true if condition.strip() not in ("", "0") else false
            priority = labels[target] if target else priority + 1
            continue
        ran.append(f"{step.app}({data})")
        if step.app == "Return":
            return ran
        if step.app == "Set" and "=" in data:
            name, _, value = data.partition("=")
            variables[name] = value
        priority += 1
    raise AssertionError(f"{context} did not return")


GOOD_FILE = "/var/spool/asterisk/monitor/callrec/0123456789abcdef0123456789abcdef.wav"


@pytest.mark.parametrize(
    ("status", "record", "file", "recorded"),
    [
        ("SUCCESS", "yes", GOOD_FILE, True),
        ("FAILED", "yes", GOOD_FILE, False),  # the app was not connected
        ("", "yes", GOOD_FILE, False),
        ("SUCCESS", "no", GOOD_FILE, False),
        ("SUCCESS", "", GOOD_FILE, False),  # no decision: never record by default
        ("SUCCESS", "YES", GOOD_FILE, False),
        ("SUCCESS", "yes ", GOOD_FILE, False),
        ("SUCCESS", "yes", "", False),
        ("SUCCESS", "yes", "callrec/x.wav", False),  # relative
        ("SUCCESS", "yes", "/var/spool/asterisk/monitor/../../etc/x.wav", False),
        ("SUCCESS", "yes", "/var/spool/asterisk/monitor/x.wav,bv(9)", False),
        ("SUCCESS", "yes", "/var/spool/asterisk/monitor/x.gsm", False),
        ("SUCCESS", "yes", "/var/spool/asterisk/monitor/${SHELL(id)}.wav", False),
        ("SUCCESS", "yes", "/var/spool/asterisk/monitor/+38640404040.wav", False),
        # The three are tested joined by spaces: no value may pass for its neighbour's part.
        ("FAILED", "yes", f"{GOOD_FILE} SUCCESS yes", False),
        ("SUCCESS", "", f"{GOOD_FILE} SUCCESS yes", False),
        ("", "", f"{GOOD_FILE} SUCCESS yes", False),
        ("SUCCESS", "yes", f'{GOOD_FILE}" SUCCESS yes', False),
        ("SUCCESS", "yes", "/var/spool/asterisk/monitor/a..wav", False),
        ("SUCCESS", "yes", f"/{'a' * 1000}.wav", False),  # too long to test safely
        ("SUCCESS", "yes", f"/{'a' * 980}.wav", True),
        ("SUCCESS", "yes", "/var/spool/asterisk/monitor/.a.b.wav16", True),
    ],
)
def test_mixmonitor_starts_only_after_success_and_yes_with_a_plain_path(
    status: str, record: str, file: str, recorded: bool
) -> None:
    """callrec-record reaches MixMonitor exactly when Stasis succeeded, CALLREC_RECORD is
    "yes" and CALLREC_FILE is an absolute .wav path of plain characters without "..";
    an unsafe path is logged as a warning."""
    variables = {"STASISSTATUS": status, "CALLREC_RECORD": record, "CALLREC_FILE": file}
    ran = run_routine("callrec-record", variables)
    monitors = [call for call in ran if call.startswith("MixMonitor(")]
    assert monitors == ([f"MixMonitor({file},b)"] if recorded else [])
    unsafe = status == "SUCCESS" and record == "yes" and not recorded
    assert any(call.startswith("Log(WARNING") for call in ran) == unsafe


@pytest.mark.parametrize(("status", "stops"), [("SUCCESS", False), ("FAILURE", True),
                                              ("NOTFOUND", True), ("", True)])  # fmt: skip
def test_agi_failure_goes_on_unrecorded(status: str, stops: bool) -> None:
    """After an AGI that did not succeed, any recording it started is stopped and
    CALLREC_RECORD is set to no; after success nothing changes."""
    variables = {"AGISTATUS": status, "CALLREC_RECORD": "yes"}
    ran = run_routine("callrec-agi-check", variables)
    assert ("StopMixMonitor()" in ran) == stops
    assert variables["CALLREC_RECORD"] == ("no" if stops else "yes")


@pytest.mark.parametrize("recording_format", ["wav", "wav16"])
def test_controller_file_names_pass_the_dialplan_check(recording_format: str) -> None:
    """The file the controller chooses in the docker setup (<spool>/<call id>.<format>, in
    either recording format) is one the dialplan accepts: the two checks agree."""
    settings = load_settings(
        CONF / "callrec.docker.toml", env={"CALLREC_ARI_PASSWORD": "unused-here"}
    )
    assert settings.recording_format == "wav16"  # stated there, for the G.722 softphones
    file = f"{settings.spool_dir}/0123456789abcdef0123456789abcdef.{recording_format}"
    assert SPOOL_FILE.match(file)
    ran = run_routine(
        "callrec-record",
        {"STASISSTATUS": "SUCCESS", "CALLREC_RECORD": "yes", "CALLREC_FILE": file},
    )
    assert f"MixMonitor({file},b)" in ran


# --- callbacks ----------------------------------------------------------------------


# Dial's forced caller ID: the callback's line's, when the controller set a plain number,
# else the global fallback.
CALLBACK_NUMBER_OPTION = (
    'f(${IF(${REGEX("^[+]?[0-9]+$" ${CALLREC_CALLBACK_CID})}'
    "?${FILTER(+0-9,${CALLREC_CALLBACK_CID})}:${CALLREC_CALLBACK_NUMBER})})"
)


def test_callback_dials_the_callee_routine_only_for_a_notice() -> None:
    """The callback flows Dial with U(<callee routine>^<call id>) on the notice branch only,
    in Dial's U(context^arg) form (apps/app_dial.c), so ARG1 is the call id."""
    for mode, routine in (("ari", "callrec-callee"), ("agi", "callrec-agi-callee")):
        steps = PLAN.extension(f"callrec-{mode}-callback", "0401234567")
        dials = {s.label: s.data for s in steps if s.app == "Dial"}
        assert set(dials) == {"dial", "notice"}
        assert split_args(dials["dial"])[2] == CALLBACK_NUMBER_OPTION
        assert split_args(dials["notice"])[2] == (
            f"{CALLBACK_NUMBER_OPTION}U({routine}^${{FILTER(0-9a-f,${{CALLREC_CALL_ID}})}})"
        )
        for data in dials.values():
            assert split_args(data)[0] == "${CALLREC_TRUNK_TECH}/${EXTEN}@${CALLREC_TRUNK}"
        branch = next(s for s in steps if s.label == "decided")
        assert branch.data == '${REGEX("^yes$" ${CALLREC_NOTICE})}?notice:dial'


def test_callee_stasis_runs_once_despite_the_nested_pbx() -> None:
    """callrec-callee guards its Stasis line with a pass counter and leaves a priority gap
    at `nested`, so the PBX res_stasis starts on a PBX-less channel after `continue` stops
    there and Gosub's own loop resumes at `decided` (see the context's comment; observed on
    a live Asterisk: one StasisStart, MixMonitor on the customer's leg, normal Return)."""
    steps = PLAN.extension("callrec-callee", "s")
    guarded = next(s for s in steps if "Stasis(" in s.data)
    assert guarded.app == "ExecIf"
    assert guarded.data == (
        '${REGEX("^1$" ${INC(CALLREC_CALLEE_PASSES)})}'
        "?Stasis(callrec,callee,${FILTER(0-9a-f,${ARG1})}):Goto(nested,1)"
    )
    before = [s for s in steps if s.priority < guarded.priority]
    assert any(s.data == "CALLREC_CALLEE_PASSES=0" for s in before)  # INC() needs a number
    after = next(s for s in steps if s.priority == guarded.priority + 1)
    assert after.label == "decided" and after.data == "callrec-record,s,1"
    nested = PLAN.extension("callrec-callee", "nested")
    assert [s.priority for s in nested] == [1, 3]
    assert nested[1].app == "Goto" and nested[1].data == "s,decided"
    assert PLAN.general["autofallthrough"] == "yes"


def test_callback_context_filters_the_line_name() -> None:
    """CALLREC_LINE (from the agent's endpoint) is reduced to a-z, digits and _ before it
    becomes a Stasis or AGI argument."""
    first = PLAN.extension("callrec-callback", "0401234567")[0]
    assert first.data == "CALLREC_LINE=${FILTER(a-z0-9_,${CALLREC_LINE})}"


# --- the rest of the configuration --------------------------------------------------


APP_MODULES = {
    "Stasis": "app_stasis", "MixMonitor": "app_mixmonitor", "StopMixMonitor": "app_mixmonitor",
    "Queue": "app_queue", "Dial": "app_dial", "Gosub": "app_stack", "Return": "app_stack",
    "ExecIf": "app_exec", "Log": "app_verbose", "Playback": "app_playback",
    "SendDTMF": "app_senddtmf", "AGI": "res_agi", "AddQueueMember": "app_queue",
    "RemoveQueueMember": "app_queue", "UserEvent": "app_userevent",
}  # fmt: skip
BUILTIN_APPS = {"Answer", "Wait", "Hangup", "Set", "GotoIf", "Goto", "NoOp"}  # pbx_builtins.c
# Needed without being named by the dialplan: ARI and its event stream, the prompts' formats
# and codecs, queue music, SIP, and the dialplan loader itself.
RUNTIME_MODULES = (
    "res_ari", "res_ari_events", "res_ari_channels", "res_ari_playbacks", "res_stasis",
    "res_stasis_playback", "res_http_websocket", "res_musiconhold", "format_wav",
    "format_sln", "format_pcm", "codec_ulaw", "codec_alaw", "chan_pjsip", "pbx_config",
)  # fmt: skip
FUNCTION_MODULES = {
    "REGEX": "func_strings", "FILTER": "func_strings", "LEN": "func_strings",
    "INC": "func_math", "IF": "func_logic", "CHANNEL": "func_channel",
    "MASTER_CHANNEL": "func_channel",
}  # fmt: skip


def test_modules_conf_loads_every_application_and_function_used() -> None:
    """With autoload off, every application and dialplan function the dialplan uses comes
    from a module modules.conf loads (an unknown one fails here until it is mapped)."""
    modules = section(CONF / "modules.conf", "modules")
    assert modules["autoload"] == ["no"]
    loaded = {name.removesuffix(".so") for name in modules["load"]}
    for step in PLAN.steps():
        apps = [step.app]
        if step.app == "ExecIf":
            apps += re.findall(r"[?:](\w+)\(", step.data)
        for app in apps:
            assert app in BUILTIN_APPS or APP_MODULES.get(app) in loaded, f"{step.where}: {app}"
        functions = re.findall(r"\$\{(\w+)\(", step.data)
        if step.app == "Set":  # a function written to: Set(CHANNEL(...)=...)
            functions += re.findall(r"^(\w+)\(", step.data.split("=", 1)[0])
        for function in functions:
            assert FUNCTION_MODULES.get(function) in loaded, f"{step.where}: {function}"
    for needed in RUNTIME_MODULES:
        assert needed in loaded, needed


def loaded_modules(path: Path) -> set[str]:
    return {name.removesuffix(".so") for name in section(path, "modules").get("load", [])}


def missing_requirements(loaded: set[str], modules: dict[str, Any]) -> dict[str, list[str]]:
    """For each loaded module, the modules its .requires names that are neither loaded nor
    compiled into the binary: with autoload off, Asterisk refuses to load it ("Failed to
    resolve dependencies")."""
    return {
        name: missing
        for name in sorted(loaded)
        if (
            missing := [
                need
                for need in modules[name]["requires"]
                if need not in loaded and not modules.get(need, {}).get("builtin", False)
            ]
        )
    }


def asterisk_modules() -> dict[str, Any]:
    if not ASTERISK_MODULES.is_file():
        pytest.skip(absent(SHARED))
    modules: dict[str, Any] = json.loads(ASTERISK_MODULES.read_text("utf-8"))["modules"]
    return modules


def test_modules_conf_loads_what_every_loaded_module_requires() -> None:
    """With autoload off, every module that modules.conf loads has each module its source
    .requires loaded too (chan_pjsip: res_pjsip, res_pjsip_session, res_pjsip_pubsub), so
    none of them fails to load."""
    modules = asterisk_modules()
    loaded = loaded_modules(CONF / "modules.conf")
    assert sorted(loaded - modules.keys()) == [], "not modules of this Asterisk"
    assert missing_requirements(loaded, modules) == {}


def test_the_requirement_check_catches_a_dropped_dependency() -> None:
    """The check above fails on a modules.conf without res_pjsip_pubsub, the module whose
    absence kept chan_pjsip from loading."""
    modules = asterisk_modules()
    loaded = loaded_modules(CONF / "modules.conf") - {"res_pjsip_pubsub"}
    assert missing_requirements(loaded, modules) == {"chan_pjsip": ["res_pjsip_pubsub"]}


# The module that registers each pjsip.conf object type or option the configuration uses
# (res/res_pjsip*.c: ast_sorcery_apply_default / ast_sip_register_*); the others are
# res_pjsip's own (endpoint, aor, auth, transport).
PJSIP_TYPE_MODULES = {
    "registration": "res_pjsip_outbound_registration",
    "identify": "res_pjsip_endpoint_identifier_ip",
}
PJSIP_OPTION_MODULES = {
    "outbound_auth": "res_pjsip_outbound_authenticator_digest",  # answers a challenge
    "auth": "res_pjsip_authenticator_digest",  # challenges the softphones
}
PJSIP_OWN_TYPES = {"endpoint", "aor", "auth", "transport"}


def test_every_pjsip_object_the_configuration_uses_has_its_module() -> None:
    """The test parties and the operator trunk example use only object types and options
    whose modules modules.conf loads (a registration without
    res_pjsip_outbound_registration is silently ignored)."""
    loaded = loaded_modules(CONF / "modules.conf")
    for path in (CONF / "pjsip.conf", TRUNK_EXAMPLE):
        for name, values in read_ini(path):
            kind = values["type"][0]
            assert kind in PJSIP_OWN_TYPES | PJSIP_TYPE_MODULES.keys(), f"{path.name} [{name}]"
            if kind in PJSIP_TYPE_MODULES:
                assert PJSIP_TYPE_MODULES[kind] in loaded, f"{path.name} [{name}]"
            if kind == "endpoint":
                for option in ("auth", "outbound_auth"):
                    if option in values:
                        assert PJSIP_OPTION_MODULES[option] in loaded, f"[{name}] {option}"
            if kind == "aor" and "contact" not in values:
                assert "res_pjsip_registrar" in loaded, f"[{name}]: phones register here"
    for needed in ("chan_pjsip", "res_pjsip_session", "res_pjsip_sdp_rtp", "res_rtp_asterisk"):
        assert needed in loaded, needed


def test_ari_listens_on_loopback_with_a_password_from_the_environment() -> None:
    """http.conf binds 127.0.0.1:8088; ari.conf's callrec user holds a placeholder, never a
    password."""
    http = section(CONF / "http.conf", "general")
    assert http["bindaddr"] == ["127.0.0.1"] and http["bindport"] == ["8088"]
    user = section(CONF / "ari.conf", "callrec")
    assert user["type"] == ["user"]
    assert user["password"] == ["@CALLREC_ARI_PASSWORD@"]
    for name, values in read_ini(CONF / "pjsip.conf"):
        for password in values.get("password", []):
            assert re.fullmatch(r"@[A-Z_]+@", password), name


def test_pjsip_has_a_customer_softphone_and_an_agent() -> None:
    """Two authenticated test endpoints, each with its auth and AOR; the agent's callbacks
    name their line."""
    pjsip = CONF / "pjsip.conf"
    customer = section(pjsip, "customer", "endpoint")
    agent = section(pjsip, "agent", "endpoint")
    assert customer["context"] == ["callrec-inbound"]
    assert agent["context"] == ["callrec-callback"]
    assert agent["set_var"] == ["CALLREC_LINE=service"]
    for name in ("customer", "agent"):
        assert section(pjsip, name, "auth")["username"] == [name]
        section(pjsip, name, "aor")
    trunk = section(pjsip, "trunk", "endpoint")
    assert "context" not in trunk and "auth" not in trunk  # outbound only
    assert PLAN.globals["CALLREC_TRUNK"].split()[0] == "trunk"


def test_the_test_customer_calls_with_a_real_number() -> None:
    """The customer softphone's calls carry a number the controller keeps (so its missed
    calls can be called back and linked), and it is no line's number."""
    customer = section(CONF / "pjsip.conf", "customer", "endpoint")
    number = re.fullmatch(r'"[^"]*" <(\+?[0-9]+)>', customer["callerid"][0])
    assert number, customer["callerid"]
    assert Policy().line_for(normalise(number.group(1))) is None


def test_callbacks_show_the_centers_number() -> None:
    """Every callback Dial forces the caller ID of the customer's leg (the line's, else
    CALLREC_CALLBACK_NUMBER, a line's public number by default), and the agent endpoint has
    no number of its own that could show instead."""
    number = PLAN.globals["CALLREC_CALLBACK_NUMBER"].split()[0]
    assert Policy().line_for(normalise(number)) is not None
    dials = [s for s in PLAN.steps() if s.app == "Dial"]
    assert len(dials) == 4  # ARI and AGI, each with and without the notice
    for step in dials:
        options = split_args(step.data)[2]
        assert options.startswith(CALLBACK_NUMBER_OPTION), step.where
    assert "callerid" not in section(CONF / "pjsip.conf", "agent", "endpoint")


@pytest.mark.parametrize(
    ("line_cid", "shown"),
    [
        ("+38640404045", "+38640404045"),  # the sales line's, as the controller set it
        ("040404045", "040404045"),
        ("", "040404040"),  # unset: Stasis failed, the global shows
        ("04040:4045", "040404040"),  # a ":" would pick IF's other branch
        ("040404045),U(evil^x", "040404040"),  # would end f() and add an option
        ("${SHELL(id)}", "040404040"),
        ("+386 40 40 40 45", "040404040"),
    ],
)
def test_callback_shows_its_lines_caller_id_or_the_global(line_cid: str, shown: str) -> None:
    """A callback's Dial shows CALLREC_CALLBACK_CID when it is a plain number (optional +,
    digits), and CALLREC_CALLBACK_NUMBER otherwise: nothing else from the variable reaches
    Dial's options."""
    option = substitute(
        CALLBACK_NUMBER_OPTION,
        {"CALLREC_CALLBACK_CID": line_cid, "CALLREC_CALLBACK_NUMBER": "040404040"},
    )
    assert option == f"f({shown})"


def test_sip_transport_has_nat_settings_from_the_environment() -> None:
    """The transport writes the external address into SDP and Contact for peers outside
    local_net (else audio and RFC 4733 digits are lost behind Docker's bridge), and
    docker-compose.yml supplies the address and the compose network it pins."""
    transport = section(CONF / "pjsip.conf", "transport-udp", "transport")
    assert transport["external_media_address"] == ["@CALLREC_SIP_EXTERNAL_ADDRESS@"]
    assert transport["external_signaling_address"] == ["@CALLREC_SIP_EXTERNAL_ADDRESS@"]
    assert transport["local_net"] == ["127.0.0.0/8", "@CALLREC_SIP_LOCAL_NET@"]
    compose = yaml.safe_load((CONF / "docker-compose.yml").read_text("utf-8"))
    env = compose["services"]["asterisk"]["environment"]
    assert env["CALLREC_SIP_EXTERNAL_ADDRESS"].startswith("${CALLREC_SIP_EXTERNAL_ADDRESS:?")
    subnet = compose["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert env["CALLREC_SIP_LOCAL_NET"] == subnet


def test_rtp_range_holds_the_documented_capacity_and_is_published() -> None:
    """rtp.conf's range holds the controller's documented 1,000 calls at once (four ports a
    bridged call), and docker-compose.yml publishes exactly that range."""
    rtp = section(CONF / "rtp.conf", "general")
    start, end = int(rtp["rtpstart"][0]), int(rtp["rtpend"][0])
    assert (end - start + 1) // RTP_PORTS_PER_CALL >= CAPACITY_CALLS
    compose = yaml.safe_load((CONF / "docker-compose.yml").read_text("utf-8"))
    assert f"{start}-{end}:{start}-{end}/udp" in compose["services"]["asterisk"]["ports"]
    assert f"{CAPACITY_CALLS:,} calls at once" in (CONF / "README.md").read_text("utf-8")


def test_operator_trunk_example_identifies_authenticates_and_registers() -> None:
    """The trunk example is a complete `trunk`: inbound calls identified by address into
    callrec-inbound, digest auth for outbound calls, an optional registration with the same
    credentials, RFC 4733 digits, media through the PBX, and no from_user to hide the
    center's number."""
    sections = read_ini(TRUNK_EXAMPLE)
    kinds = {values["type"][0]: (name, values) for name, values in sections}
    assert set(kinds) == {"endpoint", "auth", "aor", "identify", "registration"}
    name, endpoint = kinds["endpoint"]
    assert name == PLAN.globals["CALLREC_TRUNK"].split()[0] == "trunk"
    assert endpoint["context"] == ["callrec-inbound"]
    assert endpoint["dtmf_mode"] == ["rfc4733"] and endpoint["direct_media"] == ["no"]
    assert "from_user" not in endpoint and "auth" not in endpoint
    auth_name, auth = kinds["auth"]
    assert endpoint["outbound_auth"] == [auth_name]
    assert kinds["registration"][1]["outbound_auth"] == [auth_name]
    assert auth["password"] == ["@CALLREC_TRUNK_PASSWORD@"]
    assert kinds["identify"][1]["endpoint"] == ["trunk"]
    assert kinds["identify"][1]["match"] == ["@CALLREC_TRUNK_MATCH@"]
    assert kinds["aor"][0] == "trunk" and kinds["aor"][1]["contact"]


def test_operator_trunk_example_renders_in_place_of_the_test_parties(tmp_path: Path) -> None:
    """Copied to pjsip-trunk.conf and included instead of the test parties, the example
    renders with the operator's values from the environment, and `trunk` is then the
    operator's endpoint only."""
    source = tmp_path / "src"
    shutil.copytree(CONF, source, ignore=shutil.ignore_patterns("*.md", "Dockerfile*"))
    shutil.copy(TRUNK_EXAMPLE, source / "pjsip-trunk.conf")
    (source / "callrec" / "pjsip-test-parties.conf").unlink()
    pjsip = (source / "pjsip.conf").read_text("utf-8")
    pjsip = pjsip.replace("#include callrec/pjsip-test-parties.conf\n", "").replace(
        "; #include pjsip-trunk.conf", "#include pjsip-trunk.conf"
    )
    (source / "pjsip.conf").write_text(pjsip, "utf-8")
    target = tmp_path / "etc"
    secrets = {k: v for k, v in SECRETS.items() if "CUSTOMER" not in k and "AGENT" not in k}
    result = render(target, {**secrets, **TRUNK}, source)
    assert result.returncode == 0, result.stderr
    registration = section(target / "pjsip.conf", "trunk-registration", "registration")
    assert registration["client_uri"] == ["sip:0038614040400@sip.operator.example:5060"]
    assert section(target / "pjsip.conf", "trunk", "identify")["match"] == [
        TRUNK["CALLREC_TRUNK_MATCH"]
    ]
    endpoints = [n for n, v in read_ini(target / "pjsip.conf") if v["type"] == ["endpoint"]]
    assert endpoints == ["trunk"]


def test_test_parties_exist_for_the_live_tests() -> None:
    """The caller scenarios and the agent the live tests originate are in the dialplan."""
    callers = {s.exten for s in PLAN.contexts["callrec-test-caller"]}
    assert {"press1", "press2", "silent", "hangup-early", "other-key-then-1", "sales",
            "press1-giveup"} <= callers  # fmt: skip
    press1 = [f"{s.app}({s.data})" for s in PLAN.extension("callrec-test-caller", "press1")]
    assert press1[:3] == ["Answer()", "Wait(3)", "SendDTMF(1)"]
    assert PLAN.extension("callrec-test-agent", "agent")[0].app == "Answer"
    assert PLAN.extension("callrec-test-customer", "040111222")[0].app == "Answer"


def test_every_live_test_party_of_the_scenarios_exists() -> None:
    """Each `live:` name of a scenario is an extension of the test context its step uses:
    callers in callrec-test-caller, callback agents in callrec-test-agent."""
    named = 0
    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        for step in yaml.safe_load(path.read_text(encoding="utf-8"))["steps"]:
            for kind, context in (("call", "callrec-test-caller"),
                                  ("callback", "callrec-test-agent")):  # fmt: skip
                live = step.get(kind, {}).get("live") if isinstance(step, dict) else None
                if live is not None:
                    assert PLAN.extension(context, live), f"{path.name}: {live} in {context}"
                    named += 1
    assert named >= 12


# --- deployment ---------------------------------------------------------------------


def render(
    target: Path, env: dict[str, str], source: Path = CONF
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(CONF / "render-config.sh"), str(source), str(target)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


SECRETS = {
    "CALLREC_ARI_PASSWORD": "s3cr&t|\\x",
    "CALLREC_SIP_CUSTOMER_PASSWORD": "customer-pw",
    "CALLREC_SIP_AGENT_PASSWORD": "agent-pw",
    "CALLREC_SIP_EXTERNAL_ADDRESS": "192.0.2.10",
    "CALLREC_SIP_LOCAL_NET": "172.30.80.0/24",
}
TRUNK = {
    "CALLREC_TRUNK_HOST": "sip.operator.example:5060",
    "CALLREC_TRUNK_MATCH": "198.51.100.0/28,198.51.100.20",
    "CALLREC_TRUNK_USER": "0038614040400",
    "CALLREC_TRUNK_PASSWORD": "trunk-pw",
}


def test_render_config_fills_every_placeholder(tmp_path: Path) -> None:
    """Deploying copies every .conf with the passwords from the environment, verbatim,
    readable by owner and group only."""
    result = render(tmp_path, SECRETS)
    assert result.returncode == 0, result.stderr
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("**/*.conf")) == sorted(
        str(p.relative_to(CONF)) for p in CONF.glob("**/*.conf")
    )
    assert section(tmp_path / "ari.conf", "callrec")["password"] == [
        SECRETS["CALLREC_ARI_PASSWORD"]
    ]
    assert section(tmp_path / "pjsip.conf", "agent", "auth")["password"] == ["agent-pw"]
    for path in tmp_path.glob("**/*.conf"):
        assert "@CALLREC_" not in path.read_text("utf-8"), path.name
        assert path.stat().st_mode & 0o007 == 0, path.name
    unchanged = (CONF / "extensions.conf").read_text("utf-8")
    assert (tmp_path / "extensions.conf").read_text("utf-8") == unchanged


@pytest.mark.parametrize(
    "env",
    [
        {k: v for k, v in SECRETS.items() if k != "CALLREC_SIP_AGENT_PASSWORD"},
        {**SECRETS, "CALLREC_ARI_PASSWORD": ""},
        {**SECRETS, "CALLREC_ARI_PASSWORD": "cut;here"},
        {**SECRETS, "CALLREC_ARI_PASSWORD": " padded"},
    ],
)
def test_render_config_refuses_and_writes_nothing(tmp_path: Path, env: dict[str, str]) -> None:
    """A missing, empty or unwritable password stops the deployment before any file is
    written, and the reason names the variable."""
    (tmp_path / "ari.conf").write_text("previous\n", encoding="utf-8")
    result = render(tmp_path, env)
    assert result.returncode == 1
    assert re.search(r"CALLREC_\w+_PASSWORD", result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ari.conf"]
    assert (tmp_path / "ari.conf").read_text("utf-8") == "previous\n"


def test_docker_compose_wires_sounds_spool_and_loopback() -> None:
    """The test PBX mounts the prompts as sounds/sl, shares the monitor spool with the
    controller, keeps ARI on loopback by sharing Asterisk's network namespace, and builds
    Asterisk from Alpine's packages."""
    compose = yaml.safe_load((CONF / "docker-compose.yml").read_text("utf-8"))
    services = compose["services"]
    assert set(services) == {"asterisk", "controller", "mosquitto"}
    asterisk, controller = services["asterisk"], services["controller"]
    assert "../prompts/sl:/var/lib/asterisk/sounds/sl:ro" in asterisk["volumes"]
    assert "monitor:/var/spool/asterisk/monitor" in asterisk["volumes"]
    assert "monitor:/var/spool/asterisk/monitor" in controller["volumes"]
    assert "data:/var/lib/callrec" in controller["volumes"]
    assert controller["network_mode"] == "service:asterisk"
    assert controller["environment"]["CALLREC_ARI_URL"] == "http://127.0.0.1:8088/ari"
    assert controller["environment"]["CALLREC_DATA_DIR"] == "/var/lib/callrec"
    for env in (asterisk["environment"], controller["environment"]):
        assert env["CALLREC_ARI_PASSWORD"].startswith("${CALLREC_ARI_PASSWORD:?")
    settings = load_settings(
        CONF / "callrec.docker.toml", env={"CALLREC_ARI_PASSWORD": "unused-here"}
    )
    assert settings.spool_dir.is_relative_to("/var/spool/asterisk/monitor")
    dockerfile = (CONF / "Dockerfile").read_text("utf-8")
    assert re.search(r"^FROM alpine:\S+ AS asterisk$", dockerfile, re.MULTILINE)
    assert re.search(r"^RUN apk add --no-cache asterisk\b", dockerfile, re.MULTILINE)
    assert {s["build"]["target"] for s in (asterisk, controller)} == {"asterisk", "controller"}


def test_shipped_callrec_files_are_the_generated_defaults() -> None:
    """asterisk-conf/callrec/ is exactly what the generator makes from the built-in lines
    (with the test parties and placeholders), so a reader sees what an install writes."""
    generated = generate(Policy(), Options(test_parties=True))
    shipped = {str(p.relative_to(CONF)): p.read_text("utf-8") for p in (CONF / "callrec").glob("*")}
    assert sorted(shipped) == sorted(generated)
    for name, text in generated.items():
        assert shipped[name] == text, f"{name} differs from what the generator makes"


# --- asterisklint ---------------------------------------------------------------------


def test_asterisklint_finds_nothing(tmp_path: Path) -> None:
    """asterisklint's dialplan check passes, except for the deliberate priority gap in
    callrec-callee (W_DP_PRIO_BADORDER)."""
    pytest.importorskip("asterisklint")
    script = (
        "import os, sys; from asterisklint.main import main; "
        "sys.exit(main(sys.argv[1:], os.environ))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "dialplan-check", "extensions.conf"],
        cwd=CONF,
        env={**os.environ, "ALINT_IGNORE": "W_DP_PRIO_BADORDER"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_asterisklint_would_catch_a_broken_dialplan(tmp_path: Path) -> None:
    """The same check fails on a copy with a misspelt application and a jump to nowhere,
    so its silence above means something."""
    pytest.importorskip("asterisklint")
    shutil.copy(CONF / "extensions.conf", tmp_path / "extensions.conf")
    shutil.copytree(CONF / "callrec", tmp_path / "callrec")
    broken = (tmp_path / "callrec" / "extensions.conf").read_text("utf-8")
    broken = broken.replace("same => n,Queue(${CALLREC_QUEUE})", "same => n,Queeu(x)", 1)
    broken = broken.replace("Gosub(callrec-record,s,1)", "Gosub(callrec-nowhere,s,1)", 1)
    (tmp_path / "callrec" / "extensions.conf").write_text(broken, "utf-8")
    script = (
        "import os, sys; from asterisklint.main import main; "
        "sys.exit(main(sys.argv[1:], os.environ))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "dialplan-check", "extensions.conf"],
        cwd=tmp_path,
        env={**os.environ, "ALINT_IGNORE": "W_DP_PRIO_BADORDER"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Queeu" in output and "callrec-nowhere" in output


def test_config_files_parse_as_ini() -> None:
    """Every non-dialplan .conf is plain sections and key = value lines."""
    for path in CONF.glob("**/*.conf"):
        if path.name.startswith("extensions"):
            continue
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        text = "\n".join(strip_comment(line) for line in path.read_text("utf-8").splitlines())
        text = re.sub(r"^\[([^\]]+)\]\(.*\)$", r"[\1]", text, flags=re.MULTILINE)
        text = text.replace("=>", "=")
        parser.read_string(text)
        assert parser.sections(), path.name
