"""The transition-table mechanism both flows share.

A flow's `TRANSITIONS[(state, event type)]` names the action to run and the states it may
lead to. `step` is the only place a flow's state changes; an event the table has no entry
for raises `FlowError` carrying the state and the event. `mermaid` prints a table as the
diagram the README shows.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from flows.commands import Command
from flows.errors import FlowError

StateT = TypeVar("StateT", bound=enum.Enum)


class HasState(Protocol[StateT]):
    state: StateT
    call_id: str | None


FlowT = TypeVar("FlowT", bound=HasState[Any])


@dataclass(frozen=True, slots=True)
class Rule(Generic[FlowT, StateT]):
    """What an event does in a state: run `action`, which returns the next state (one of
    `targets`) and the commands to carry out."""

    action: Callable[[FlowT, Any, datetime], tuple[StateT, list[Command]]]
    targets: tuple[StateT, ...]


Table = Mapping[tuple[StateT, type], Rule[FlowT, StateT]]


def step(table: Table[StateT, FlowT], flow: FlowT, event: object, now: datetime) -> list[Command]:
    rule = table.get((flow.state, type(event)))
    if rule is None:
        raise FlowError(
            f"{type(event).__name__} is not allowed in state {flow.state.name}",
            call_id=flow.call_id,
        )
    state, commands = rule.action(flow, event, now)
    if state not in rule.targets:  # a table that lies about its targets is a bug here
        raise FlowError(
            f"{type(event).__name__} in {flow.state.name} led to undeclared {state.name}",
            call_id=flow.call_id,
        )
    flow.state = state
    return commands


def mermaid(table: Table[StateT, FlowT], title: str) -> str:
    """The table as a Mermaid state diagram; self-loops that only ignore are left out."""
    lines = ["stateDiagram-v2", f"    %% {title}"]
    seen: set[tuple[str, str, str]] = set()
    for (state, event_type), rule in table.items():
        for target in rule.targets:
            if target == state and len(rule.targets) == 1 and _ignores(rule):
                continue
            edge = (state.name, target.name, event_type.__name__)
            if edge not in seen:
                seen.add(edge)
                lines.append(f"    {state.name} --> {target.name}: {event_type.__name__}")
    return "\n".join(lines) + "\n"


def _ignores(rule: Rule[Any, Any]) -> bool:
    return getattr(rule.action, "__name__", "") == "ignore"


def ignore(flow: HasState[Any], event: object, now: datetime) -> tuple[Any, list[Command]]:
    """An event that is legal in a state but changes nothing (a late PlaybackFinished,
    a key pressed after the decision)."""
    return flow.state, []


def stays(state: StateT) -> Rule[Any, StateT]:
    return Rule(ignore, (state,))
