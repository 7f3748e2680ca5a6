"""The simulated PBX's dialplan: contexts of priorities, as `extensions.conf` writes them.

A priority names a dialplan application and its data. The data is either a literal or a
function of the channel's variables (with the globals, `EXTEN`, `CONTEXT`, `CHANNEL` and a
Gosub's `ARG1`...), which plays the part of Asterisk's `${...}` substitution and its
functions (`REGEX`, `FILTER`, `IF`): what the function returns is what a `ChannelDialplan`
event shows as `dialplan_app_data`, as Asterisk shows the substituted data (a `GotoIf`
reads `1?record:check`).

`callrec_dialplan()` follows `asterisk-conf/extensions.conf` (ARI mode) priority by priority
(`tests/test_simpbx_dialplan.py` compares them): `callrec-inbound` (each DID of the
dialplan's own table, `agi.simpbx.dids`, picks the queue), `callrec-ari-inbound` (clear the
controller's variables with `callrec-clear`, push the hangup handler,
`Stasis(callrec,inbound,${EXTEN})`, `Gosub(callrec-record,s,1)`, `Queue(${CALLREC_QUEUE})`,
`Hangup()`), `callrec-record`
(MixMonitor(${CALLREC_FILE},b) only when STASISSTATUS is SUCCESS, CALLREC_RECORD is exactly
`yes` and the file is a plain absolute `.wav` path without `..`), `callrec-agent-connect`
(the queues' membergosub: CALLREC_AGENT on the caller's channel), `callrec-callback` /
`callrec-ari-callback` (Stasis as `callback`, then Dial, with `U(callrec-callee^<call id>)`
when CALLREC_NOTICE is `yes`), `callrec-callee` (Stasis as `callee` on the customer's leg,
then the same recording rule) and `callrec-hangup`. `queues.conf` is mirrored by
`QueueSettings` (member `PJSIP/agent`, `setinterfacevar`, `membergosub`).

Where the simulator differs on purpose: `callrec-inbound` and the ARI contexts also take
any other dialed text (`_.`), since scenario files write numbers as people do
(`040 40 40 45`), which a trunk never delivers; and `callrec-callee` runs Stasis once
without the guard against res_stasis' nested PBX, which the simulator does not have.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agi.simpbx.dids import load_dids, queue_of
from agi.simpbx.errors import SimulationSettingError

Variables = Mapping[str, str]
Data = str | Callable[[Variables], str]

DIAL_TIMEOUT = 60  # CALLREC_DIAL_TIMEOUT: seconds a callback rings the customer
FASTAGI_ADDRESS = "127.0.0.1:4573"  # where extensions-fastagi.conf's AGI() connects
AGENT_CONNECT_GOSUB = "callrec-agent-connect"
SAFE_RECORDING_FILE = re.compile(r"/(?!.*\.\.)[A-Za-z0-9/_.-]+\.wav(16)?")
# What callrec-hangup's CallrecEnded user event carries, in its order.
_ENDED_FIELDS = ("ANSWEREDTIME", "ABANDONED", "CALLREC_AGENT", "MEMBERINTERFACE")
_CALLREC_VARIABLES = (  # cleared on entry: nothing a channel brings may decide to record
    "CALLREC_RECORD",
    "CALLREC_FILE",
    "CALLREC_CALL_ID",
    "CALLREC_NOTICE",
    "CALLREC_AGENT",
    "CALLREC_CALLBACK_CID",
)


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """One queue of `queues.conf`, as far as the caller's channel can tell."""

    member: str = "PJSIP/agent"  # the member's interface (MEMBERINTERFACE)
    member_name: str = "agent"
    setinterfacevar: bool = False  # MEMBERINTERFACE... on both channels before the bridge
    membergosub: str = ""  # run on the member's channel when it answers


@dataclass(frozen=True, slots=True)
class Priority:
    app: str
    data: Data = ""
    label: str | None = None

    def render(self, variables: Variables) -> str:
        return self.data if isinstance(self.data, str) else self.data(variables)


@dataclass(frozen=True, slots=True)
class Dialplan:
    """`contexts[context][extension pattern]` is the extension's priorities, from 1."""

    contexts: Mapping[str, Mapping[str, tuple[Priority, ...]]]
    inbound_context: str = "callrec-inbound"
    callback_context: str = "callrec-callback"
    queues: Mapping[str, QueueSettings] = field(default_factory=dict)
    globals: Mapping[str, str] = field(default_factory=dict)
    _patterns: dict[str, re.Pattern[str]] = field(default_factory=dict, repr=False)

    def extension(self, context: str, exten: str) -> tuple[Priority, ...] | None:
        """The priorities `exten` runs in `context`: an exact match first, then patterns."""
        extensions = self.contexts.get(context)
        if extensions is None:
            return None
        if exten in extensions:
            return extensions[exten]
        for pattern, priorities in extensions.items():
            if pattern.startswith("_") and self._compiled(pattern).fullmatch(exten):
                return priorities
        return None

    def priority(self, context: str, exten: str, number: int) -> Priority | None:
        priorities = self.extension(context, exten)
        if priorities is None or not 1 <= number <= len(priorities):
            return None
        return priorities[number - 1]

    def label(self, context: str, exten: str, label: str) -> int | None:
        for number, priority in enumerate(self.extension(context, exten) or (), start=1):
            if priority.label == label:
                return number
        return None

    def _compiled(self, pattern: str) -> re.Pattern[str]:
        compiled = self._patterns.get(pattern)
        if compiled is None:
            compiled = re.compile(extension_pattern(pattern))
            self._patterns[pattern] = compiled
        return compiled


def extension_pattern(pattern: str) -> str:
    """Asterisk's extension pattern (`_X.`, `_0[1-9]XX!`) as a regular expression."""
    out: list[str] = []
    body = pattern[1:]
    index = 0
    while index < len(body):
        char = body[index]
        if char == "X":
            out.append("[0-9]")
        elif char == "Z":
            out.append("[1-9]")
        elif char == "N":
            out.append("[2-9]")
        elif char == ".":
            out.append(".+")
        elif char == "!":
            out.append(".*")
        elif char == "[":
            end = body.index("]", index)
            out.append("[" + re.escape(body[index + 1 : end]).replace("\\-", "-") + "]")
            index = end
        else:
            out.append(re.escape(char))
        index += 1
    return "".join(out)


def recording_allowed(variables: Variables) -> bool:
    """The dialplan's condition for MixMonitor: Stasis succeeded, the controller said exactly
    `yes`, and the file is a safe absolute path (never record by default)."""
    return (
        variables.get("STASISSTATUS") == "SUCCESS"
        and variables.get("CALLREC_RECORD") == "yes"
        and SAFE_RECORDING_FILE.fullmatch(variables.get("CALLREC_FILE", "")) is not None
    )


def _regex(pattern: str, value: str | None) -> str:
    """`${REGEX("pattern" value)}`: 1 or 0."""
    return str(int(re.search(pattern, value or "") is not None))


def _joined(variables: Variables, *names: str) -> str:
    """`${A} ${B} ...`: the variables' values joined by spaces."""
    return " ".join(variables.get(name, "") for name in names)


def _filter(allowed: str, value: str | None) -> str:
    """`${FILTER(a-z0-9_,value)}` for the simple character ranges the dialplan uses."""
    return "".join(char for char in value or "" if re.fullmatch(f"[{allowed}]", char))


def callrec_dialplan(
    app: str = "callrec",
    dids: Mapping[str, str] | None = None,
    *,
    mode: str = "ari",
    fallback_queue: str = "service",
) -> Dialplan:
    """The dialplan of `asterisk-conf/extensions.conf` and `extensions-fastagi.conf`, for
    Stasis application `app`, with CALLREC_MODE `mode` (`ari` or `agi`). `dids` (DID ->
    queue) is `callrec-inbound`'s table, by default read from the checkout's `asterisk-conf/`
    (`agi.simpbx.dids`); a dialled number of no DID reaches `fallback_queue`."""
    if mode not in ("ari", "agi"):
        raise SimulationSettingError(f"CALLREC_MODE is ari or agi, not {mode!r}")
    table = dict(load_dids() if dids is None else dids)
    if not table:
        raise SimulationSettingError("the simulated dialplan needs at least one DID")

    def to_ari(kind: str) -> Priority:
        return Priority("Goto", lambda v: f"callrec-{v['CALLREC_MODE']}-{kind},{v['EXTEN']},1")

    inbound: dict[str, tuple[Priority, ...]] = {
        did: (Priority("Set", f"CALLREC_QUEUE={queue}"), to_ari("inbound"))
        for did, queue in table.items()
    }
    inbound["_."] = (
        Priority("Set", lambda v: f"CALLREC_QUEUE={queue_of(v['EXTEN'], table, fallback_queue)}"),
        to_ari("inbound"),
    )
    clear = Priority("Gosub", "callrec-clear,s,1")
    clear_routine = (
        *(Priority("Set", f"{name}=") for name in _CALLREC_VARIABLES),
        Priority("Return"),
    )
    push_handler = Priority("Set", "CHANNEL(hangup_handler_push)=callrec-hangup,s,1")
    ari_inbound = (
        Priority("NoOp", lambda v: f"callrec: inbound call for queue {v.get('CALLREC_QUEUE', '')}"),
        clear,
        push_handler,
        Priority("Answer"),
        Priority("Stasis", lambda v: f"{app},inbound,{v['EXTEN']}"),
        Priority("Gosub", "callrec-record,s,1"),
        Priority("Queue", lambda v: v.get("CALLREC_QUEUE", "")),
        Priority("Hangup"),
    )
    record = (
        Priority(
            "GotoIf",
            lambda v: (
                _regex(
                    "^([0-9]|[0-9][0-9]|[0-9][0-9][0-9]) "
                    "/([-A-Za-z0-9/_]|[.][-A-Za-z0-9/_])+[.](wav|wav16) SUCCESS yes$",
                    f"{len(v.get('CALLREC_FILE', '') + v.get('CALLREC_RECORD', ''))} "
                    + _joined(v, "CALLREC_FILE", "STASISSTATUS", "CALLREC_RECORD"),
                )
                + "?record:check"
            ),
        ),
        Priority("MixMonitor", lambda v: f"{v.get('CALLREC_FILE', '')},b", label="record"),
        Priority("Return"),
        Priority(
            "GotoIf",
            lambda v: (
                _regex("^SUCCESS yes$", _joined(v, "STASISSTATUS", "CALLREC_RECORD"))
                + "?unsafe:skip"
            ),
            label="check",
        ),
        Priority(
            "Log",
            "WARNING,callrec: CALLREC_FILE is not a plain absolute .wav path so the call is "
            "not recorded",
            label="unsafe",
        ),
        Priority("Return", label="skip"),
    )
    agent_connect = (
        Priority(
            "Set",
            lambda v: f"MASTER_CHANNEL(CALLREC_AGENT)={v.get('MEMBERINTERFACE') or v['CHANNEL']}",
        ),
        Priority("Return"),
    )

    def dial(v: Variables) -> str:
        target = f"{v['CALLREC_TRUNK_TECH']}/{v['EXTEN']}@{v['CALLREC_TRUNK']}"
        return f"{target},{v['CALLREC_DIAL_TIMEOUT']}"

    ari_callback = (
        Priority("NoOp", lambda v: f"callrec: callback on line {v.get('CALLREC_LINE', '')}"),
        clear,
        push_handler,
        Priority("Stasis", lambda v: f"{app},callback,{v['EXTEN']},{v.get('CALLREC_LINE', '')}"),
        Priority("Gosub", "callrec-record,s,1"),
        Priority("GotoIf", lambda v: f"{_regex('^SUCCESS$', v.get('STASISSTATUS'))}?decided:dial"),
        Priority(
            "GotoIf",
            lambda v: f"{_regex('^yes$', v.get('CALLREC_NOTICE'))}?notice:dial",
            label="decided",
        ),
        Priority("Dial", dial, label="dial"),
        Priority("Hangup"),
        Priority(
            "Dial",
            lambda v: f"{dial(v)},U(callrec-callee^{_filter('0-9a-f', v.get('CALLREC_CALL_ID'))})",
            label="notice",
        ),
        Priority("Hangup"),
    )
    callee = (
        Priority("NoOp", lambda v: f"callrec: customer leg of callback {v.get('ARG1', '')}"),
        clear,
        push_handler,
        Priority("Set", "CALLREC_CALLEE_PASSES=0"),
        Priority(
            "ExecIf",
            lambda v: f"1?Stasis({app},callee,{_filter('0-9a-f', v.get('ARG1'))}):Goto(nested,1)",
        ),
        Priority("Gosub", "callrec-record,s,1", label="decided"),
        Priority("Return"),
    )
    hangup = (
        Priority(
            "Log",
            lambda v: (
                f"NOTICE,callrec: call {v.get('CALLREC_CALL_ID', '')} ended: answered "
                f"{v.get('ANSWEREDTIME', '')} s / abandoned {v.get('ABANDONED', '')} / agent "
                f"{v.get('CALLREC_AGENT', '')}"
            ),
        ),
        Priority(
            "UserEvent",
            lambda v: ",".join(
                [
                    "CallrecEnded",
                    *(f"{name}:{v.get(name, '')}" for name in _ENDED_FIELDS),
                ]
            ),
        ),
        Priority("Return"),
    )
    queue = QueueSettings(setinterfacevar=True, membergosub=AGENT_CONNECT_GOSUB)
    agi_contexts = _agi_contexts(clear, dial)
    return Dialplan(
        contexts={
            **agi_contexts,
            "callrec-inbound": inbound,
            "callrec-callback": {
                "_.": (
                    Priority(
                        "Set", lambda v: f"CALLREC_LINE={_filter('a-z0-9_', v.get('CALLREC_LINE'))}"
                    ),
                    to_ari("callback"),
                )
            },
            "callrec-ari-inbound": {"_.": ari_inbound},
            "callrec-ari-callback": {"_.": ari_callback},
            "callrec-clear": {"s": clear_routine},
            "callrec-record": {"s": record},
            "callrec-agent-connect": {"s": agent_connect},
            "callrec-callee": {"s": callee},
            "callrec-hangup": {"s": hangup},
        },
        queues=dict.fromkeys(sorted({*table.values(), fallback_queue}), queue),
        globals={
            "CALLREC_DIALPLAN_VERSION": "2",
            "CALLREC_MODE": mode,
            "CALLREC_TRUNK_TECH": "PJSIP",
            "CALLREC_TRUNK": "trunk",
            "CALLREC_DIAL_TIMEOUT": str(DIAL_TIMEOUT),
        },
    )


def _agi_contexts(
    clear: Priority, dial: Callable[[Variables], str]
) -> dict[str, Mapping[str, tuple[Priority, ...]]]:
    """The FastAGI-mode contexts of `asterisk-conf/extensions-fastagi.conf`."""
    server = f"agi://{FASTAGI_ADDRESS}"
    push_handler = Priority("Set", "CHANNEL(hangup_handler_push)=callrec-agi-hangup,s,1")
    check = Priority("Gosub", "callrec-agi-check,s,1")
    inbound = (
        Priority("NoOp", lambda v: f"callrec: inbound call for queue {v.get('CALLREC_QUEUE', '')}"),
        clear,
        push_handler,
        Priority("AGI", lambda v: f"{server}/inbound,{v['EXTEN']}"),
        check,
        Priority("Queue", lambda v: v.get("CALLREC_QUEUE", "")),
        Priority("Hangup"),
    )
    agi_check = (
        Priority("GotoIf", lambda v: f"{_regex('^SUCCESS$', v.get('AGISTATUS'))}?done"),
        Priority("StopMixMonitor"),
        Priority("Set", "CALLREC_RECORD=no"),
        Priority(
            "Log",
            lambda v: (
                f"WARNING,callrec: the FastAGI server did not finish (AGISTATUS "
                f"{v.get('AGISTATUS', '')}) so the call goes on unrecorded"
            ),
        ),
        Priority("Return", label="done"),
    )
    callback = (
        Priority("NoOp", lambda v: f"callrec: callback on line {v.get('CALLREC_LINE', '')}"),
        clear,
        push_handler,
        Priority("AGI", lambda v: f"{server}/callback,{v['EXTEN']},{v.get('CALLREC_LINE', '')}"),
        check,
        Priority("GotoIf", lambda v: f"{_regex('^SUCCESS$', v.get('AGISTATUS'))}?decided:dial"),
        Priority(
            "GotoIf",
            lambda v: f"{_regex('^yes$', v.get('CALLREC_NOTICE'))}?notice:dial",
            label="decided",
        ),
        Priority("Dial", dial, label="dial"),
        Priority("Hangup"),
        Priority(
            "Dial",
            lambda v: (
                f"{dial(v)},U(callrec-agi-callee^{_filter('0-9a-f', v.get('CALLREC_CALL_ID'))})"
            ),
            label="notice",
        ),
        Priority("Hangup"),
    )
    callee = (
        Priority("NoOp", lambda v: f"callrec: customer leg of callback {v.get('ARG1', '')}"),
        clear,
        push_handler,
        Priority("AGI", lambda v: f"{server}/callee,{_filter('0-9a-f', v.get('ARG1'))}"),
        check,
        Priority("Return"),
    )
    hangup = (
        Priority("GotoIf", lambda v: f"{len(v.get('CALLREC_CALL_ID', ''))}?report:done"),
        Priority(
            "AGI",
            lambda v: (
                f"{server}/hangup,{_filter('0-9a-f', v.get('CALLREC_CALL_ID'))},"
                f"{v.get('ANSWEREDTIME', '')},{v.get('ABANDONED', '')},"
                f"{v.get('CALLREC_AGENT', '')}"
            ),
            label="report",
        ),
        Priority("Return", label="done"),
    )
    return {
        "callrec-agi-inbound": {"_.": inbound},
        "callrec-agi-check": {"s": agi_check},
        "callrec-agi-callback": {"_.": callback},
        "callrec-agi-callee": {"s": callee},
        "callrec-agi-hangup": {"s": hangup},
    }
