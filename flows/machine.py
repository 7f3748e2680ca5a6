"""The transition-table mechanism both flows share.

A flow's table reads as a table (h11's `_state.py` is the model): for each state, one row
per trigger, and each row names exactly one next state and, optionally, the action that
says what to do on the way there. A trigger is an event type, or `When(event type,
condition)` when the same event leads to different states: the flow turns the condition
(which key, how many wrong keys so far, how many silences) into a trigger *before* the
look-up, so no action decides where the flow goes. A row keyed by the bare event type
covers every condition of that event that has no row of its own in the state.

`step` is the only place a flow's state changes. It raises `FlowError`, carrying the state
and the event, for an event type the state has no row for; and it drops, once for every
state, an event that answers a prompt or wait the flow has since replaced (Asterisk still
reports the end of a playback that a key stopped). `mermaid` prints a table as the diagram
the README shows (`python -m callrec.diagrams --update README.md`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from flows.commands import Command
from flows.errors import FlowError
from flows.events import DigitTimedOut, PromptFailed, PromptFinished

StateT = TypeVar("StateT", bound=enum.Enum)

# Events that answer one prompt or wait, named by the token of the command that started it.
Tokened = PromptFinished | PromptFailed | DigitTimedOut


class HasState(Protocol[StateT]):
    state: StateT
    call_id: str | None


FlowT = TypeVar("FlowT", bound=HasState[Any])


@dataclass(frozen=True, slots=True)
class When:
    """An event of type `event` under one condition the flow tells apart before the look-up
    (h11 pairs an event type with a sentinel the same way)."""

    event: type
    condition: str

    def __str__(self) -> str:
        return f"{self.event.__name__} ({self.condition})"


Trigger = type | When


@dataclass(frozen=True, slots=True)
class Row(Generic[FlowT, StateT]):
    """Go to `next`; on the way, run `action` (if any) for the commands to carry out."""

    next: StateT
    action: Callable[[FlowT, Any, datetime], list[Command]] | None = None


Table = Mapping[StateT, Mapping[Trigger, Row[FlowT, StateT]]]


def event_type(trigger: Trigger) -> type:
    return trigger.event if isinstance(trigger, When) else trigger


def label(trigger: Trigger) -> str:
    return str(trigger) if isinstance(trigger, When) else trigger.__name__


def step(
    table: Table[StateT, FlowT],
    flow: FlowT,
    event: object,
    now: datetime,
    *,
    trigger: Callable[[object], Trigger] = type,
    token: int | None = None,
) -> list[Command]:
    """Run the row of `flow.state` for `event`, classified by `trigger`. `token` is the
    flow's current prompt or wait (None: the flow plays none)."""
    rows = table.get(flow.state, {})
    if not any(event_type(t) is type(event) for t in rows):
        raise FlowError(
            f"{type(event).__name__} is not allowed in state {flow.state.name}",
            call_id=flow.call_id,
        )
    if token is not None and isinstance(event, Tokened) and event.token != token:
        return []  # the end of a prompt or wait already replaced: it changes nothing
    classified = trigger(event)
    row = rows.get(classified)
    if row is None:
        row = rows.get(type(event))
    if row is None:  # a table with a hole for one condition is a bug here, not the caller's
        raise FlowError(
            f"{label(classified)} has no row in state {flow.state.name}",
            call_id=flow.call_id,
        )
    commands = [] if row.action is None else row.action(flow, event, now)
    flow.state = row.next
    return commands


def mermaid(table: Table[StateT, FlowT], title: str) -> str:
    """The table as a Mermaid state diagram, row by row; rows that stay put and do nothing
    (a late event, a key pressed after the decision) are left out."""
    lines = ["stateDiagram-v2", f"    %% {title}"]
    for state, rows in table.items():
        for trigger, row in rows.items():
            if row.next == state and row.action is None:
                continue
            lines.append(f"    {state.name} --> {row.next.name}: {label(trigger)}")
    return "\n".join(lines) + "\n"
