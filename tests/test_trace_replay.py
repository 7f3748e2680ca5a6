"""Each real trace of `../shared/ari-traces/` replayed against the simulated PBX.

For every trace file the test
1. derives the caller's script from the trace's own timing: digits at their offset from the
   first PlaybackStarted, a hang-up before the queue at its offset from StasisStart, the
   agent's answer and the talk time from the Dial/BRIDGEPEER events, giving up from the
   queue's hang-up;
2. gives the simulator the probe dialplan the trace ran (application `probe`, contexts
   `inbound` and `after-consent`), written out below and checked against every dialplan
   location the trace shows, and the probe prompt's duration measured in the no-key trace;
3. connects a WebSocket as `probe` and replays the trace's REST requests in order (the
   originate of the Local test caller included), each once the events that preceded it in
   the trace have arrived and after the trace's pause before it (scaled), with the trace's
   channel and playback ids replaced by the simulator's and `CALLREC_FILE` by a file under
   the test's temporary directory;
4. compares, ignoring ids and timestamps:
   - per REST request: the status code, and the field names of a JSON body;
   - the whole event sequence, event by event: the type; the field names of the event and
     of its `channel`/`playback` objects; the channel's state, dialplan context and
     application; and per type: StasisStart args, the digit and its duration, the
     playback's state and media, ChannelVarset's variable and value, ChannelDialplan's
     application and data, a hang-up request's cause and `soft`, ChannelDestroyed's cause
     and text, Dial's status and the peer's state. Values are normalised only where they
     are ids or measurements: the recording file's path, channel names (`Local/...`,
     `PJSIP/...`), and positive numbers (times in seconds or milliseconds);
   - the MixMonitor file against the README's figures (about 311 kB for the answered queue
     call, a 44-byte header for the missed one).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from reference import ARI_TRACES, absent
from test_simpbx import PASSWORD, auth_header

from agi.simpbx import CallerScript, SimulatedPbx
from agi.simpbx.dialplan import Dialplan, Priority

TRACES = ARI_TRACES
TRACE_FILES = sorted(TRACES.glob("*.json"))
if not TRACE_FILES:
    pytest.skip(absent(TRACES), allow_module_level=True)
SCALE = 0.05  # the traces span about a minute of calls; replayed in a few seconds
WAIT = 5.0
SETTLE = 0.3  # wall seconds to wait for events the trace does not have

Variables = Mapping[str, str]


def _record_is_yes(variables: Variables) -> int:
    return int(variables.get("CALLREC_RECORD") == "yes")


# The dialplan the consent traces ran: Stasis(probe,${EXTEN}) on inbound priority 2, then
# `continue` to after-consent,s,1. Priorities the traces never reached are NoOp.
CONSENT_PROBE = Dialplan(
    contexts={
        "inbound": {"040404040": (Priority("NoOp"), Priority("Stasis", "probe,040404040"))},
        "after-consent": {
            "s": (
                Priority("Verbose", lambda v: f"1,decision {v.get('CALLREC_RECORD', '')}"),
                Priority("GotoIf", lambda v: f"{_record_is_yes(v)}?rec"),
                Priority("NoOp"),
                Priority("NoOp"),
                Priority("MixMonitor", lambda v: f"{v.get('CALLREC_FILE', '')},", label="rec"),
                Priority("Wait", "3"),
                Priority("Hangup"),
            )
        },
    },
    inbound_context="inbound",
)
# The dialplan the queue traces ran: Stasis(probe) on inbound priority 1, `continue` to the
# next priority, MixMonitor(...,b) on a yes, then Queue(support).
QUEUE_PROBE = Dialplan(
    contexts={
        "inbound": {
            "040404040": (
                Priority("Stasis", "probe"),
                Priority("GotoIf", lambda v: f"{_record_is_yes(v)}?rec:q"),
                Priority("MixMonitor", lambda v: f"{v.get('CALLREC_FILE', '')},b", label="rec"),
                Priority("Queue", "support,,,,30", label="q"),
                Priority("Hangup"),
            )
        }
    },
    inbound_context="inbound",
)


def _load(path: Path) -> list[dict[str, Any]]:
    log: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["log"]
    return log


def _events(log: list[dict[str, Any]]) -> list[tuple[float, dict[str, Any]]]:
    return [(entry["t"], entry["event"]) for entry in log if entry["kind"] == "event"]


def _dialplan_for(log: list[dict[str, Any]]) -> Dialplan:
    start = next(event for _, event in _events(log) if event["type"] == "StasisStart")
    return QUEUE_PROBE if start["args"] == [] else CONSENT_PROBE


def _prompt_seconds() -> float:
    """How long the probe prompt plays when nobody interrupts it (the no-key trace)."""
    events = _events(_load(TRACES / "no-key-timeout.json"))
    started = next(t for t, e in events if e["type"] == "PlaybackStarted")
    finished = next(t for t, e in events if e["type"] == "PlaybackFinished")
    return finished - started


def _derive_script(log: list[dict[str, Any]]) -> tuple[str, CallerScript]:
    """The Local test caller's name and what it did, read from the trace's timing."""
    originate = next(e for e in log if e["kind"] == "rest" and e["path"] == "/channels")
    name = originate["params"]["endpoint"].partition("/")[2].partition("@")[0]
    events = _events(log)

    def first(predicate: Callable[[dict[str, Any]], bool]) -> float | None:
        return next((t for t, e in events if predicate(e)), None)

    start = first(lambda e: e["type"] == "StasisStart")
    played = first(lambda e: e["type"] == "PlaybackStarted")
    queued = first(lambda e: e.get("dialplan_app") == "Queue")
    assert start is not None and played is not None
    keys = tuple(
        (round(t - played, 3), e["digit"]) for t, e in events if e["type"] == "ChannelDtmfReceived"
    )
    hung_up = first(lambda e: e["type"] == "ChannelHangupRequest" and "soft" not in e)
    answered = first(lambda e: e["type"] == "Dial" and e["dialstatus"] == "ANSWER")
    bridged = first(lambda e: e.get("variable") == "BRIDGEPEER" and e["value"])
    unbridged = first(lambda e: e.get("variable") == "BRIDGEPEER" and not e["value"])
    script = CallerScript(
        keys=keys,
        hang_up_at=round(hung_up - start, 3) if hung_up and queued is None else None,
        agent_answers_after=round(answered - queued, 3) if answered and queued else None,
        give_up_after=round(hung_up - queued, 3) if hung_up and queued else 5.0,
        talk_seconds=round(unbridged - bridged, 3) if bridged and unbridged else 3.0,
    )
    return name, script


def _normal_value(value: str, files: set[str]) -> str:
    for file in files:
        value = value.replace(file, "<recording file>")
    if value.startswith(("Local/", "PJSIP/")):
        return "<channel name>"
    if value.isdigit() and int(value) > 0:
        return "<positive number>"
    return value


def _shape(event: dict[str, Any], files: set[str]) -> tuple[Any, ...]:
    """What of an event must match the trace (see the module docstring)."""
    kind = event["type"]
    keys = frozenset(event)
    channel = event.get("channel")
    where = (
        (channel["state"], channel["dialplan"]["context"], channel["dialplan"]["app_name"])
        if channel
        else None
    )
    nested = frozenset(channel) if channel else frozenset(event.get("playback", {}))
    detail: tuple[Any, ...]
    match kind:
        case "StasisStart":
            detail = tuple(event["args"])
        case "ChannelDtmfReceived":
            detail = (event["digit"], event["duration_ms"])
        case "PlaybackStarted" | "PlaybackFinished":
            detail = (event["playback"]["state"], event["playback"]["media_uri"])
        case "ChannelVarset":
            detail = (event["variable"], _normal_value(event["value"], files))
        case "ChannelDialplan":
            detail = (event["dialplan_app"], _normal_value(event["dialplan_app_data"], files))
        case "ChannelHangupRequest":
            detail = (event.get("cause"), event.get("soft"))
        case "ChannelDestroyed":
            detail = (event["cause"], event["cause_txt"])
        case "Dial":
            detail = (event["dialstatus"], event["peer"]["state"])
        case _:
            detail = ()
    return (kind, keys, nested, where, detail)


class _Replay:
    def __init__(self, log: list[dict[str, Any]], sim: SimulatedPbx, file: Path) -> None:
        self.log = log
        self.sim = sim
        self.file = file
        self.ids: dict[str, str] = {}
        self.trace_file = ""
        self.got: list[dict[str, Any]] = []
        self.rest: list[tuple[dict[str, Any], int, Any]] = []

    def substitute(self, text: str) -> str:
        if self.trace_file and text == self.trace_file:
            return str(self.file)
        for trace_id, sim_id in self.ids.items():
            text = text.replace(trace_id, sim_id)
        return text

    async def read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.got.append(json.loads(message.data))

    async def until_events(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while len(self.got) < count and loop.time() < deadline:
            await asyncio.sleep(0.005)

    async def run(self, session: aiohttp.ClientSession) -> None:
        seen = 0
        previous = self.log[0]["t"]
        for entry in self.log:
            if entry["kind"] == "event":
                seen += 1
                previous = entry["t"]
                continue
            await self.until_events(seen)
            await asyncio.sleep(max(0.0, entry["t"] - previous) * SCALE)
            previous = entry["t"]
            params = dict(entry["params"])
            if params.get("variable") == "CALLREC_FILE":
                self.trace_file = str(params["value"])
            query = {k: self.substitute(str(v)) for k, v in params.items()}
            url = self.sim.base_url + self.substitute(entry["path"])
            async with session.request(entry["method"], url, params=query) as response:
                text = await response.text()
                body = json.loads(text) if text else ""
            self.rest.append((entry, response.status, body))
            if isinstance(entry["body"], dict) and isinstance(body, dict) and "id" in body:
                self.ids[entry["body"]["id"]] = body["id"]
        await self.until_events(seen)
        await asyncio.sleep(SETTLE)


def _check_dialplan_matches_trace(log: list[dict[str, Any]], dialplan: Dialplan) -> None:
    """Every location the trace's call visits is in the written-out probe dialplan."""
    variables: dict[str, str] = {}
    for entry in log:
        if entry["kind"] == "rest" and entry["params"].get("variable"):
            variables[entry["params"]["variable"]] = str(entry["params"].get("value", ""))
    call_id = next(e for e in log if e["kind"] == "rest")["body"]["id"]
    for _, event in _events(log):
        channel = event.get("channel")
        if not channel or channel["id"] != call_id:
            continue
        where = channel["dialplan"]
        if where["app_name"] == "AppDial2":
            continue
        step = dialplan.priority(where["context"], where["exten"], where["priority"])
        assert step is not None, where
        assert (step.app, step.render(variables)) == (where["app_name"], where["app_data"])


@pytest.mark.parametrize("path", TRACE_FILES, ids=[p.stem for p in TRACE_FILES])
async def test_trace_replays_with_the_same_events(path: Path, tmp_path: Path) -> None:
    """The simulator answers the trace's requests and sends the trace's events, in order."""
    log = _load(path)
    dialplan = _dialplan_for(log)
    _check_dialplan_matches_trace(log, dialplan)
    name, script = _derive_script(log)
    prompt = _prompt_seconds()
    sim = SimulatedPbx(
        app="probe",
        user="callrec",
        password=PASSWORD,
        prompt_durations={"sl/probe-consent": prompt, "probe-consent": prompt},
        time_scale=SCALE,
        dialplan=dialplan,
        local_scripts={name: script},
    )
    await sim.start()
    file = tmp_path / "recording.wav"
    replay = _Replay(log, sim, file)
    try:
        async with aiohttp.ClientSession(headers=auth_header()) as session:
            ws = await session.ws_connect(
                sim.base_url.replace("http://", "ws://") + "/events", params={"app": "probe"}
            )
            reader = asyncio.get_running_loop().create_task(replay.read(ws))
            try:
                await replay.run(session)
            finally:
                await ws.close()
                await reader
    finally:
        await sim.stop()

    for entry, status, body in replay.rest:
        assert status == entry["status"], (entry["method"], entry["path"], body)
        if isinstance(entry["body"], dict):
            assert set(body) == set(entry["body"]), entry["path"]
    trace_files = {replay.trace_file} - {""}
    expected = [_shape(event, trace_files) for _, event in _events(log)]
    actual = [_shape(event, {str(file)}) for event in replay.got]
    for index, (want, got) in enumerate(zip(expected, actual, strict=False)):
        assert got == want, f"event {index}: expected {want}, got {got}"
    assert len(actual) == len(expected), [e["type"] for e in replay.got[len(expected) :]]

    if path.stem == "queue-agent-answers":
        assert abs(file.stat().st_size - 311_000) / 311_000 < 0.03
    elif path.stem == "queue-caller-gives-up-missed":
        assert file.stat().st_size == 44
    elif replay.trace_file:
        assert file.stat().st_size > 44
    else:
        assert not file.exists()
