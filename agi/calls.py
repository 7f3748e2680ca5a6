"""From "a call arrived" to a ready `CallSession`: the same for ARI and FastAGI.

Each adapter extracts the raw facts (dialed exten, caller ID, Asterisk's channel id, the
route and its arguments) and calls one of these; the line lookup, number normalisation and
the choice of flow live here once. Raw caller IDs are normalised or dropped here and never
travel further as text.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from agi.ports import ChannelPort
from agi.session import CallSession, SessionDeps
from flows.callbacks import CallbackFlow
from flows.communication import communication_of, customer_of
from flows.consent import InboundFlow
from flows.errors import NumberError
from flows.events import CallbackPlaced, CallEntered, Event
from flows.numbers import masked, normalise, shown, try_normalise
from flows.policy import Direction, Line, Policy
from flows.retention import numbers_deleted_after
from storage.ports import CallStart

CALL_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)
class Rejected:
    """No session: the call goes on unrecorded, and why."""

    reason: str


def new_call_id() -> str:
    return uuid.uuid4().hex


def _start(
    deps: SessionDeps,
    policy: Policy,
    *,
    channel_id: str,
    direction: Direction,
    line: Line,
    caller: str | None,
    dialed: str | None,
    parent_call_id: str | None = None,
    parent_communication: str | None = None,
) -> CallStart:
    call_id = new_call_id()
    now = deps.clock.now()
    return CallStart(
        call_id=call_id,
        channel_id=channel_id,
        direction=direction,
        line=line.name,
        caller=caller,
        dialed=dialed,
        started_at=now,
        purge_after=numbers_deleted_after(line, now, tz=policy.timezone),
        parent_call_id=parent_call_id,
        customer=customer_of(direction, caller, dialed),
        communication_id=communication_of(call_id, None, parent_communication),
    )


async def inbound_session(
    deps: SessionDeps,
    policy: Policy,
    channel: ChannelPort,
    *,
    channel_id: str,
    dialed: str,
    caller: str | None,
) -> tuple[CallSession, Event] | Rejected:
    try:
        number = normalise(dialed, country_code=policy.country_code)
    except NumberError:
        # The error repeats the number: the reason names it masked, and no phone number
        # reaches the log.
        return Rejected(f"dialed number {masked(dialed)} is unusable: not a phone number")
    line = policy.line_for(number)
    if line is None:
        return Rejected(f"{masked(number)} is the number of no line")
    start = _start(
        deps,
        policy,
        channel_id=channel_id,
        direction=Direction.INBOUND,
        line=line,
        caller=try_normalise(caller, country_code=policy.country_code),
        dialed=number,
    )
    flow = InboundFlow.for_line(line, policy, call_id=start.call_id)
    return CallSession(start, flow, channel, deps), CallEntered()


async def callback_session(
    deps: SessionDeps,
    policy: Policy,
    channel: ChannelPort,
    *,
    channel_id: str,
    customer: str,
    line_name: str | None,
    agent: str | None,
) -> tuple[CallSession, Event] | Rejected:
    try:
        number = normalise(customer, country_code=policy.country_code)
    except NumberError:
        return Rejected(f"callback number {masked(customer)} is unusable: not a phone number")
    name = line_name or policy.callback_default_line
    line = policy.line_named(name)
    if line is None:
        return Rejected(f"callback names no known line: {shown(name)}")
    start = _start(
        deps,
        policy,
        channel_id=channel_id,
        direction=Direction.CALLBACK,
        line=line,
        caller=try_normalise(agent, country_code=policy.country_code),
        dialed=number,
    )
    flow = CallbackFlow.for_line(line, policy, call_id=start.call_id)
    overload = await deps.ledger.overload()
    return CallSession(start, flow, channel, deps), CallbackPlaced(overload=overload)


async def callee_session(
    deps: SessionDeps,
    policy: Policy,
    channel: ChannelPort,
    *,
    channel_id: str,
    parent_call_id: str,
) -> tuple[CallSession, Event] | Rejected:
    """The customer's leg of a callback that is a new communication: it hears the notice
    of the callback's line, exactly as an inbound caller would."""
    if not CALL_ID.match(parent_call_id):
        return Rejected(f"callee leg names a malformed call id {shown(parent_call_id)}")
    parent = await deps.ledger.get_call(parent_call_id)
    if parent is None or parent.direction is not Direction.CALLBACK or parent.line is None:
        return Rejected(f"callee leg names no callback call {parent_call_id}")
    line = policy.line_named(parent.line)
    if line is None:
        return Rejected(f"callback {parent_call_id} is on a line no longer configured")
    start = _start(
        deps,
        policy,
        channel_id=channel_id,
        direction=Direction.CALLEE,
        line=line,
        caller=parent.dialed,
        dialed=parent.dialed,
        parent_call_id=parent_call_id,
        parent_communication=parent.communication_id or parent_call_id,
    )
    flow = InboundFlow.for_line(line, policy, call_id=start.call_id)
    return CallSession(start, flow, channel, deps), CallEntered()
