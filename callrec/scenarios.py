"""Call scenarios: YAML files that say what callers do and what the policy must make of it.

A scenario is a list of steps run in order against one controller and one store:

    name: Service line, the caller presses 1
    start: "2026-11-25T09:00:00+01:00"     # the controller's clock at the first step
    steps:
      - call: {name: first, dialed: "040 40 40 40", caller: "041 555 101",
               keys: [[2.0, "1"]], agent_answers_after: 2, talk_seconds: 4}
        expect: {decision: record, recorded: true, outcome: answered,
                 prompts: [callrec-consent-question]}
      - advance: 40m                        # or: at: "2026-11-25T10:00:00+01:00"
      - callback: {name: back, customer: "041 555 101", line: service,
                   customer_keys: [[1.0, "1"]]}
        expect: {decision: record, recorded: true, linked_to: first, prompts: []}
      - overload: {enabled: true, by: "supervisor"}
      - withdraw: {caller: "041 555 101", via: email, by: "dpo",
                   received_at: "2026-04-02T10:00:00+02:00"}
        expect: {deleted: [first], kept: [sales], due_on: "2026-04-10"}
      - sweep: {}
        expect: {deleted: [first], kept: [second]}

`keys` are (seconds after the prompt starts, DTMF key: 0-9, *, #, A-D); `expect` may also
name the `digit` the decision was given with (null: none). `agent_answers_after: null` means
nobody answers and the caller gives up after `give_up_after` seconds (a missed call).
`live: <extension>` names the test caller of `asterisk-conf/extensions.conf`
(`callrec-test-caller`, or `callrec-test-agent` for a callback's agent) that plays the same
part on a real Asterisk (`callrec replay --ari URL`); a scenario with a call that has none
is skipped there.
Expectations name calls by their `name`; a step with no `expect` only acts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from flows.errors import ConfigError

STEP_KINDS = ("call", "callback", "advance", "at", "overload", "withdraw", "sweep")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class Step:
    kind: str
    args: Mapping[str, Any]
    expect: Mapping[str, Any]
    where: str  # "file.yaml step 3", for messages


@dataclass(frozen=True, slots=True)
class Scenario:
    path: Path
    name: str
    start: datetime | None
    steps: tuple[Step, ...]
    description: str = ""


@dataclass(slots=True)
class Check:
    """One expectation and whether it held."""

    where: str
    what: str
    expected: object
    actual: object

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


@dataclass(slots=True)
class StepReport:
    where: str
    title: str
    lines: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)


def parse_duration(text: object, where: str) -> timedelta:
    match = _DURATION.match(str(text).strip())
    if match is None:
        raise ConfigError(f"{where}: {text!r} is not a duration like 40m, 61m, 2h or 183d")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_time(text: object, where: str) -> datetime:
    if isinstance(text, datetime):
        value = text
    else:
        try:
            value = datetime.fromisoformat(str(text))
        except ValueError:
            raise ConfigError(f"{where}: {text!r} is not an ISO-8601 time") from None
    if value.tzinfo is None:
        raise ConfigError(f"{where}: {text!r} needs a UTC offset, e.g. +01:00")
    return value


def load_scenario(path: Path) -> Scenario:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("steps"), list):
        raise ConfigError(f"{path}: a scenario is a mapping with a list of steps")
    steps: list[Step] = []
    for index, raw in enumerate(data["steps"], start=1):
        where = f"{path.name} step {index}"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: a step is a mapping")
        kinds = [k for k in raw if k in STEP_KINDS]
        unknown = [k for k in raw if k not in STEP_KINDS and k != "expect"]
        if len(kinds) != 1 or unknown:
            raise ConfigError(
                f"{where}: a step has exactly one of {', '.join(STEP_KINDS)} (and an optional "
                f"expect); got {', '.join(map(str, raw))}"
            )
        kind = kinds[0]
        args = raw[kind]
        if kind in ("advance", "at"):
            args = {"value": args}
        if not isinstance(args, Mapping):
            raise ConfigError(f"{where}: {kind} takes a mapping")
        if "name" in args and not isinstance(args["name"], str):
            # YAML 1.1 reads a bare yes, no, on or off as a boolean, and 1 as a number.
            raise ConfigError(
                f'{where}: name {args["name"]!r} is not text; quote it, e.g. name: "yes"'
            )
        expect = raw.get("expect") or {}
        if not isinstance(expect, Mapping):
            raise ConfigError(f"{where}: expect takes a mapping")
        steps.append(Step(kind, args, expect, where))
    start = data.get("start")
    return Scenario(
        path=path,
        name=str(data.get("name", path.stem)),
        start=parse_time(start, f"{path.name} start") if start is not None else None,
        steps=tuple(steps),
        description=str(data.get("description", "")),
    )


def load_scenarios(paths: Sequence[Path]) -> list[Scenario]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.glob("*.yaml")))
        else:
            files.append(path)
    if not files:
        raise ConfigError("no scenario files given")
    return [load_scenario(path) for path in files]
