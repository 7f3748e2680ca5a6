"""Runs scenario steps (calls, withdrawals, sweeps) on a `callrec.harness.Harness` and checks
what each step expects; `demo` and `replay` both use it, what they print differs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from agi.simpbx import CallerScript, CallResult, SimulatedPbx, SimulatorError
from callrec.harness import (
    CALL_TIMEOUT,
    CALLEE_GRACE,
    LIVE_CALL_TIMEOUT,
    Harness,
    originate,
    set_agents,
    until,
)
from callrec.scenarios import (
    Check,
    Scenario,
    Step,
    StepReport,
    parse_duration,
    parse_time,
)
from flows.errors import CallrecError, ConfigError
from flows.keys import KEYS
from flows.numbers import normalise
from storage.ports import CallRow, RecordingRow, RecordingStatus, WithdrawalVia
from storage.rows import short_recording_id

log = logging.getLogger("callrec.runner")


def _script(args: Mapping[str, Any], prefix: str, where: str) -> CallerScript:
    def get(key: str, default: Any) -> Any:
        return args.get(f"{prefix}{key}", default)

    keys = tuple((float(at), str(digit)) for at, digit in get("keys", []))
    for _, digit in keys:
        if digit not in KEYS:
            raise ConfigError(f"{where}: {digit!r} is not a DTMF key (0-9, *, #, A-D)")
    agent = get("agent_answers_after", 2.0)
    hang_up = get("hang_up_at", None)
    try:
        return CallerScript(
            keys=keys,
            hang_up_at=None if hang_up is None else float(hang_up),
            agent_answers_after=None if agent is None else float(agent),
            give_up_after=float(get("give_up_after", 5.0)),
            talk_seconds=float(get("talk_seconds", 3.0)),
        )
    except SimulatorError as error:
        raise ConfigError(f"{where}: {error}") from None


async def _until_finished(h: Harness, channel_id: str, within: float, message: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await h.finished(channel_id):
        if loop.time() > deadline:
            raise CallrecError(message)
        await asyncio.sleep(0.01)


async def _finished_call(h: Harness, result: CallResult) -> CallRow | None:
    """The ledger row of a call the simulator has finished, once the controller has
    finished it too (outcome stored, file ingested)."""
    if h.fastagi is not None:
        # The hangup handler stored the end before the channel went; its file is taken
        # once MixMonitor closed it. A channel that never reached the server has no call.
        await h.collector.drain()
        if h.call_id_of(result.channel_id) is None:
            return None
    await _until_finished(
        h, result.channel_id, 10.0, f"the controller did not finish channel {result.channel_id}"
    )
    call_id = h.call_id_of(result.channel_id)
    return None if call_id is None else await h.store.get_call(call_id)


async def _recording_of(h: Harness, call_id: str | None) -> RecordingRow | None:
    if call_id is None:
        return None
    for row in await h.store.recordings(include_deleted=True):
        if row.call_id == call_id:
            return row
    return None


async def run_step(h: Harness, step: Step) -> StepReport:
    match step.kind:
        case "advance":
            delta = parse_duration(step.args["value"], step.where)
            h.clock.advance(delta)
            return StepReport(step.where, f"{_clock(h)}  time moves on by {step.args['value']}")
        case "at":
            target = parse_time(step.args["value"], step.where)
            h.clock.advance(target - h.clock.now())
            return StepReport(step.where, f"{_clock(h)}  the clock is set")
        case "overload":
            # `enabled`, not `on`: YAML 1.1 reads a bare `on` as the boolean true.
            on = step.args.get("enabled")
            if not isinstance(on, bool):
                raise ConfigError(f"{step.where}: overload takes enabled: true or false")
            await h.store.set_overload(on, str(step.args.get("by", "operator")), h.clock.now())
            state = "ON" if on else "off"
            return StepReport(step.where, f"{_clock(h)}  overload switch {state} (audited)")
        case "call" | "callback":
            return await _call_step(h, step)
        case "withdraw":
            return await _withdraw_step(h, step)
        case "sweep":
            return await _sweep_step(h, step)
    raise ConfigError(f"{step.where}: unknown step {step.kind}")


def _clock(h: Harness) -> str:
    return h.clock.now().astimezone(_zone(h)).strftime("%Y-%m-%d %H:%M")


def _zone(h: Harness) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(h.policy.timezone)


class NotLive(CallrecError):
    """A scenario step that cannot run against a live Asterisk (no `live:` test caller)."""


async def _live_call(h: Harness, step: Step, name: str) -> CallResult:
    """Place the step's call on a real Asterisk through the test contexts of
    asterisk-conf/, and wait until the controller has finished it."""
    args = step.args
    script = args.get("live")
    if not isinstance(script, str):
        raise NotLive(f"{step.where}: no `live:` test-caller extension for {name}")
    nobody_answers = "agent_answers_after" in args and args["agent_answers_after"] is None
    if nobody_answers:  # a missed call: take the test agent out of the queues first
        await set_agents(h, present=False)
    try:
        if step.kind == "call":
            dialed = normalise(str(args["dialed"]))
            national = "0" + dialed[4:] if dialed.startswith("+386") else dialed
            caller = str(args.get("caller", ""))
            channel_id = await originate(
                h,
                f"Local/{script}@callrec-test-caller",
                context="callrec-inbound",
                extension=national,
                caller_id=f'"Test" <{caller}>' if caller else None,
            )
        else:
            customer = "0" + normalise(str(args["customer"]))[4:]
            channel_id = await originate(
                h,
                f"Local/{script}@callrec-test-agent",
                context="callrec-callback",
                extension=customer,
                variables={"CALLREC_LINE": str(args.get("line", ""))},
            )
        await until(
            lambda: h.call_id_of(channel_id) is not None,
            LIVE_CALL_TIMEOUT,
            f"{step.where}: the call never reached the controller",
        )
        await _until_finished(
            h, channel_id, LIVE_CALL_TIMEOUT, f"{step.where}: the call did not end"
        )
        call_id = h.call_id_of(channel_id)
        callee_id = None
        if step.kind == "callback" and call_id is not None:
            callee_id = await _callee_leg(h, call_id)
    finally:
        if nobody_answers:
            await set_agents(h, present=True)
    callee = None
    if callee_id is not None:
        callee = await _live_result(h, f"callee of {channel_id}", callee_id)
    result = await _live_result(h, channel_id, call_id)
    return replace(result, callee=callee)


async def _callee_leg(h: Harness, call_id: str) -> str | None:
    """The customer's leg of callback `call_id` when it heard the notice (a new
    communication), once the controller is done with it too."""
    row = await h.store.get_call(call_id)
    if row is None or row.decision.value != "none" or row.recording_file is not None:
        return None  # the same communication: decided on the agent's leg
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < LIVE_CALL_TIMEOUT:
        leg = None
        for candidate in reversed(h.recent_call_ids()):
            found = await h.store.get_call(candidate)
            if found is not None and found.parent_call_id == call_id:
                leg = found
                break
        if leg is None and loop.time() - started > CALLEE_GRACE:
            return None  # no customer leg reached the controller (nobody answered)
        if leg is not None and leg.ended_at is not None and not h.collector.pending(leg.call_id):
            return leg.call_id
        await asyncio.sleep(0.1)
    raise CallrecError(f"the customer's leg of callback {call_id} did not end")


async def _live_result(h: Harness, channel_id: str, call_id: str | None) -> CallResult:
    row = await h.store.get_call(call_id) if call_id else None
    return CallResult(
        channel_id=channel_id,
        stasis_status="SUCCESS",
        variables={"CALLREC_CALL_ID": call_id} if call_id else {},
        recorded_file=row.recording_file if row else None,
        recorded_bytes=0,
        answered_by_agent=bool(row and row.outcome and row.outcome.value == "answered"),
        prompts_played=(),
        digits_sent=(),
    )


async def _simulated_call(sim: SimulatedPbx, step: Step, name: str) -> CallResult:
    args = step.args
    try:
        if step.kind == "call":
            caller = args.get("caller")
            placed = await sim.place_call(
                str(args["dialed"]),
                None if caller is None else str(caller),
                _script(args, "", step.where),
            )
        else:
            placed = await sim.place_callback(
                str(args["customer"]),
                args.get("line"),
                agent_script=_script(args, "agent_", step.where),
                customer_script=_script(args, "customer_", step.where),
            )
    except SimulatorError as error:
        raise ConfigError(f"{step.where}: {name}: {error}") from None
    return await asyncio.wait_for(placed.done, CALL_TIMEOUT)


async def _call_step(h: Harness, step: Step) -> StepReport:
    args = step.args
    name = str(args.get("name", f"call{len(h.calls) + 1}"))
    if step.kind == "call":
        dialed = str(args["dialed"])
        caller = args.get("caller")
        title = f"{_clock(h)}  {name}: {caller or 'anonymous'} calls {dialed}"
    else:
        customer = str(args["customer"])
        title = f"{_clock(h)}  {name}: an agent calls {customer} back"
    if h.sim is None:
        result = await _live_call(h, step, name)
    else:
        result = await _simulated_call(h.sim, step, name)
    report = StepReport(step.where, title)
    row = await _finished_call(h, result)
    leg = result
    if step.kind == "callback" and result.callee is not None:
        if h.sim is None:  # found by the ledger, already finished (_callee_leg)
            callee_id = result.callee.variables.get("CALLREC_CALL_ID")
            callee_row = await h.store.get_call(callee_id) if callee_id else None
        else:
            callee_row = await _finished_call(h, result.callee)
        report.lines.append("agent's leg: no missed call within the window -> new communication")
        if row is not None:
            h.calls[f"{name}.agent"] = row.call_id
        row, leg = callee_row, result.callee
    if row is not None:
        h.calls[name] = row.call_id
    recording = await _recording_of(h, row.call_id if row else None)
    _describe(report, row, leg, recording, h)
    _check_call(report, step, row, leg, recording, h)
    return report


def _describe(
    report: StepReport,
    row: CallRow | None,
    leg: CallResult,
    recording: RecordingRow | None,
    h: Harness,
) -> None:
    if h.sim is None:  # a live PBX does not report what a channel heard: the ledger does
        prompt = row.prompt if row is not None and row.prompt else "-"
        report.lines.append(f"prompt of the decision (ledger): {prompt}")
    else:
        heard = ", ".join(leg.prompts_played) or "no prompt"
        report.lines.append(f"heard: {heard}; keys: {''.join(leg.digits_sent) or '-'}")
    if row is None:
        report.lines.append("not handled by the controller (no ledger row)")
        return
    report.lines.append(
        f"decision: {row.decision.value}"
        + (f" (digit {row.digit})" if row.digit else "")
        + f"; {row.reason or ''}; outcome: {row.outcome.value if row.outcome else '-'}"
    )
    if row.linked_to:
        report.lines.append(f"linked to missed call {row.linked_to[:8]}")
    if recording is None:
        report.lines.append("recording: none")
    else:
        due = recording.delete_after.astimezone(_zone(h)).strftime("%Y-%m-%d %H:%M")
        report.lines.append(
            f"recording: {recording.status.value}, {recording.size} bytes, "
            f"basis {recording.legal_basis.value}, delete after {due}"
        )


def _check_call(
    report: StepReport,
    step: Step,
    row: CallRow | None,
    leg: CallResult,
    recording: RecordingRow | None,
    h: Harness,
) -> None:
    expect = step.expect
    where = step.where
    if "decision" in expect:
        actual = row.decision.value if row else None
        report.checks.append(Check(where, "decision", expect["decision"], actual))
    if "digit" in expect:
        actual = row.digit if row else None
        wanted = expect["digit"]
        report.checks.append(Check(where, "digit", None if wanted is None else str(wanted), actual))
    if "recorded" in expect:
        stored = recording is not None and recording.status is RecordingStatus.STORED
        report.checks.append(Check(where, "recorded", bool(expect["recorded"]), stored))
        # Fail closed, seen from the PBX side too: MixMonitor ran only on a committed yes.
        report.checks.append(
            Check(
                where,
                "MixMonitor started only with a recorded decision",
                True,
                leg.recorded_file is None or (row is not None and row.decision.value == "record"),
            )
        )
    if "outcome" in expect:
        actual = row.outcome.value if row and row.outcome else None
        report.checks.append(Check(where, "outcome", expect["outcome"], actual))
    if "prompts" in expect and h.sim is not None:  # a live PBX does not tell what played
        report.checks.append(
            Check(where, "prompts heard", list(expect["prompts"]), list(leg.prompts_played))
        )
    if "linked_to" in expect:
        wanted = expect["linked_to"]
        actual_link = row.linked_to if row else None
        expected_id = h.calls.get(str(wanted)) if wanted is not None else None
        report.checks.append(Check(where, f"linked to {wanted}", expected_id, actual_link))
    if "legal_basis" in expect:
        actual = recording.legal_basis.value if recording else None
        report.checks.append(Check(where, "legal basis", expect["legal_basis"], actual))


def _ids(h: Harness, names: Any, where: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name in names or []:
        if str(name) not in h.calls:
            raise ConfigError(f"{where}: no call named {name!r} before this step")
        out.append((str(name), h.calls[str(name)]))
    return out


async def _state_of(h: Harness, call_id: str) -> str:
    recording = await _recording_of(h, call_id)
    return "none" if recording is None else recording.status.value


async def _withdraw_step(h: Harness, step: Step) -> StepReport:
    """A withdrawal by the caller's number (`caller:`), or of the one communication of a
    call (`call:` names it) or of its recording (`recording:` names the call)."""
    args = step.args
    caller = normalise(str(args["caller"])) if "caller" in args else None
    call_id = recording_id = None
    if "call" in args:
        (_, call_id), *_ = _ids(h, [args["call"]], step.where)
        named = f"call {args['call']}"
    elif "recording" in args:
        (_, of_call), *_ = _ids(h, [args["recording"]], step.where)
        recording = await _recording_of(h, of_call)
        if recording is None:
            raise ConfigError(f"{step.where}: call {args['recording']!r} has no recording")
        recording_id, named = recording.id, f"recording of {args['recording']}"
    else:
        named = str(args.get("caller"))
    received = (
        parse_time(args["received_at"], step.where) if "received_at" in args else h.clock.now()
    )
    result = await h.store.withdraw(
        caller,
        WithdrawalVia(str(args.get("via", "phone"))),
        received,
        str(args.get("by", "agent")),
        h.clock.now(),
        call_id=call_id,
        recording_id=recording_id,
    )
    report = StepReport(
        step.where, f"{_clock(h)}  withdrawal of consent by {named} via {result.via.value}"
    )
    report.lines.append(
        f"received on {result.received_on}, due by {result.due_on}; "
        f"deleted {len(result.deleted)}, kept {len(result.kept)}"
    )
    for recording_id, why in result.kept:
        report.lines.append(f"kept {short_recording_id(recording_id)}: {why}")
    await _check_outcomes(h, step, report)
    if "due_on" in step.expect:
        report.checks.append(Check(step.where, "due on", str(step.expect["due_on"]), result.due_on))
    if result.completed_at is not None:
        report.checks.append(
            Check(
                step.where,
                "completed by the deadline",
                True,
                result.completed_at <= result.deadline,
            )
        )
    return report


async def _sweep_step(h: Harness, step: Step) -> StepReport:
    result = await h.store.sweep(h.clock.now(), dry_run=bool(step.args.get("dry_run", False)))
    report = StepReport(
        step.where,
        f"{_clock(h)}  retention sweep: {len(result.deleted)} recording(s) past delete-after",
    )
    await _check_outcomes(h, step, report)
    return report


async def _check_outcomes(h: Harness, step: Step, report: StepReport) -> None:
    for name, call_id in _ids(h, step.expect.get("deleted"), step.where):
        report.checks.append(
            Check(step.where, f"{name} deleted", "deleted", await _state_of(h, call_id))
        )
    for name, call_id in _ids(h, step.expect.get("kept"), step.where):
        report.checks.append(
            Check(step.where, f"{name} kept", "stored", await _state_of(h, call_id))
        )


def live_capable(scenario: Scenario) -> bool:
    """Whether every call of the scenario names a test caller of asterisk-conf/."""
    return all(
        isinstance(step.args.get("live"), str)
        for step in scenario.steps
        if step.kind in ("call", "callback")
    )


async def run_scenario(h: Harness, scenario: Scenario) -> list[StepReport]:
    if scenario.start is not None:
        h.clock.advance(scenario.start - h.clock.now())
    reports = []
    for step in scenario.steps:
        reports.append(await run_step(h, step))
    return reports


def now_text(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")
