"""The simulated dialplan after `continue`: MixMonitor's real WAV files, the queue's variables
(answered or missed), Stasis failing without an app, and callbacks with their customer leg."""

from __future__ import annotations

import array
import asyncio
import math
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_simpbx import PROMPTS, SCALE, WAIT, Ari, simulated_ari

from agi.simpbx import CallerScript
from agi.simpbx.dialplan import SAFE_RECORDING_FILE, Dialplan, Priority

CALL_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
async def ari() -> AsyncIterator[Ari]:
    async with simulated_ari() as client:
        yield client


def read_wav(path: Path) -> tuple[tuple[int, int, int], array.array[int]]:
    with wave.open(str(path)) as audio:
        params = (audio.getframerate(), audio.getnchannels(), audio.getsampwidth())
        samples = array.array("h")
        samples.frombytes(audio.readframes(audio.getnframes()))
    return params, samples


def rms(samples: array.array[int]) -> float:
    return math.sqrt(sum(s * s for s in samples) / len(samples)) if samples else 0.0


def variables_seen(events: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(e["variable"], e["value"]) for e in events if e["type"] == "ChannelVarset"]


async def consented_call(
    ari: Ari, file: Path, script: CallerScript
) -> tuple[str, list[dict[str, Any]]]:
    """A caller on the service line presses 1; the controller records to `file`."""
    events = await ari.events()
    call = await ari.pbx.place_call("040404040", "041123456", script)
    await events.expect("StasisStart")
    await ari.call("POST", f"/channels/{call.channel_id}/answer")
    playback = await ari.play(call.channel_id)
    await events.expect("ChannelDtmfReceived", digit="1")
    await ari.call("DELETE", f"/playbacks/{playback}")
    await ari.decide(call.channel_id, record="yes", file=str(file))
    await events.expect("ChannelDestroyed")
    result = await asyncio.wait_for(call.done, WAIT)
    assert result.stasis_status == "SUCCESS"
    return call.channel_id, events.seen


async def test_answered_call_leaves_real_audio(ari: Ari, tmp_path: Path) -> None:
    """An agent answers: BRIDGEPEER and CALLREC_AGENT are seen, and the WAV holds exactly
    the talk time of audible 8 kHz mono 16-bit audio."""
    file = tmp_path / "spool" / f"{CALL_ID}.wav"
    script = CallerScript(keys=((1.0, "1"),), agent_answers_after=1.0, talk_seconds=3.0)
    events = await ari.events()
    call = await ari.pbx.place_call("040404040", "041123456", script)
    await events.expect("StasisStart")
    playback = await ari.play(call.channel_id)
    await events.expect("ChannelDtmfReceived")
    await ari.call("DELETE", f"/playbacks/{playback}")
    await ari.decide(call.channel_id, record="yes", file=str(file))
    await events.expect("ChannelDestroyed")
    result = await asyncio.wait_for(call.done, WAIT)
    seen = dict(variables_seen(events.seen))
    assert seen["BRIDGEPEER"] == "" and seen["ANSWEREDTIME"] == "3"
    assert seen["CALLREC_AGENT"] == seen["MEMBERINTERFACE"] == "PJSIP/agent"
    assert seen["MIXMONITOR_FILENAME"] == str(file)
    names = [name for name, _ in variables_seen(events.seen)]
    connect = names[names.index("QUEUEPOSITION") : names.index("BRIDGEPEER") + 1]
    assert connect == [
        "QUEUEPOSITION",
        "MEMBERINTERFACE",
        "MEMBERNAME",
        "MEMBERCALLS",
        "MEMBERLASTCALL",
        "MEMBERPENALTY",
        "MEMBERDYNAMIC",
        "MEMBERREALTIME",
        "CALLREC_AGENT",
        "QUEUEWAIT",
        "QUEUEWAIT_MS",
        "BRIDGEPEER",
    ], "app_queue's order when a member answers"
    dials = [e["dialstatus"] for e in events.seen if e["type"] == "Dial"]
    assert dials == ["", "ANSWER"]
    assert result.answered_by_agent and result.recorded_file == str(file)
    params, samples = read_wav(file)
    assert params == (8000, 1, 2)
    assert len(samples) == 3 * 8000
    assert result.recorded_bytes == file.stat().st_size == 44 + 2 * len(samples)
    assert rms(samples) > 1000, "a conversation, not silence"


async def test_nobody_answering_leaves_a_header_only_wav(ari: Ari, tmp_path: Path) -> None:
    """The caller gives up in the queue: ANSWEREDTIME=0, ABANDONED=TRUE, a 44-byte WAV, and
    the hangup handler reports both in its CallrecEnded user event before the destruction."""
    file = tmp_path / f"{CALL_ID}.wav"
    script = CallerScript(keys=((1.0, "1"),), agent_answers_after=None, give_up_after=2.0)
    _, seen = await consented_call(ari, file, script)
    types = [e["type"] for e in seen]
    params, samples = read_wav(file)
    assert params == (8000, 1, 2) and len(samples) == 0
    assert file.stat().st_size == 44
    assert "Dial" not in types
    assert types[-6:] == [
        "ChannelHangupRequest",
        "ChannelDialplan",
        "ChannelDialplan",
        "ChannelUserevent",
        "ChannelDialplan",
        "ChannelDestroyed",
    ], "the hangup handler runs between the last request and the destruction"
    [ended] = [e for e in seen if e["type"] == "ChannelUserevent"]
    assert ended["eventname"] == "CallrecEnded"
    assert ended["userevent"] == {
        "ANSWEREDTIME": "0",
        "ABANDONED": "TRUE",
        "CALLREC_AGENT": "",
        "MEMBERINTERFACE": "",
    }


async def test_missed_call_variables_follow_the_trace_order(ari: Ari, tmp_path: Path) -> None:
    """A caller who gives up: hang-up request, the queue's variables, a soft request."""
    events = await ari.events()
    script = CallerScript(agent_answers_after=None, give_up_after=1.0)
    call = await ari.pbx.place_call("040404040", "041123456", script)
    await events.expect("StasisStart")
    await ari.decide(call.channel_id, record="no", file=None)
    await events.expect("ChannelDestroyed")
    tail = events.seen[events.seen.index(await_first(events.seen, "ChannelHangupRequest")) :]
    assert [(e["type"], e.get("variable"), e.get("soft")) for e in tail] == [
        ("ChannelHangupRequest", None, None),
        ("ChannelVarset", "QUEUEWAIT", None),
        ("ChannelVarset", "QUEUEWAIT_MS", None),
        ("ChannelVarset", "DIALEDTIME", None),
        ("ChannelVarset", "DIALEDTIME_MS", None),
        ("ChannelVarset", "ANSWEREDTIME", None),
        ("ChannelVarset", "ANSWEREDTIME_MS", None),
        ("ChannelVarset", "ABANDONED", None),
        ("ChannelVarset", "QUEUEPOSITION", None),
        ("ChannelHangupRequest", None, True),
        ("ChannelDialplan", None, None),
        ("ChannelDialplan", None, None),
        ("ChannelUserevent", None, None),  # the hangup handler's CallrecEnded
        ("ChannelDialplan", None, None),
        ("ChannelDestroyed", None, None),
    ]
    handler = [e["dialplan_app"] for e in tail if e["type"] == "ChannelDialplan"]
    assert handler == ["Log", "UserEvent", "Return"]
    result = await asyncio.wait_for(call.done, WAIT)
    assert result.variables["ANSWEREDTIME"] == "0" and result.recorded_file is None


def await_first(events: list[dict[str, object]], kind: str) -> dict[str, object]:
    return next(e for e in events if e["type"] == kind)


async def test_queue_timeout_goes_on_unanswered() -> None:
    """Queue(...,30) returns TIMEOUT to a caller who would wait longer: no ABANDONED."""
    plan = Dialplan(
        contexts={
            "in": {
                "_.": (
                    Priority("Stasis", "callrec"),
                    Priority("Queue", "support,,,,30"),
                    Priority("Hangup"),
                )
            }
        },
        inbound_context="in",
    )
    async with simulated_ari(dialplan=plan) as ari:
        events = await ari.events()
        script = CallerScript(agent_answers_after=None, give_up_after=60.0)
        call = await ari.pbx.place_call("040404040", "041123456", script)
        await events.expect("StasisStart")
        await ari.decide(call.channel_id, record="no", file=None)
        await events.expect("ChannelDestroyed", within=60 * SCALE + WAIT)
        result = await asyncio.wait_for(call.done, WAIT)
    assert result.variables["QUEUESTATUS"] == "TIMEOUT"
    assert "ABANDONED" not in result.variables and not result.answered_by_agent
    assert result.variables["QUEUEWAIT"] == "30"


@pytest.mark.parametrize(
    ("record", "name", "refusal"),
    [
        ("Yes", "ok.wav", "0?unsafe:skip"),
        ("yes ", "ok.wav", "0?unsafe:skip"),
        ("yes", "relative.wav", "1?unsafe:skip"),
        ("yes", "../escape.wav", "1?unsafe:skip"),
        ("yes", "sound.mp3", "1?unsafe:skip"),
    ],
)
async def test_recording_needs_exactly_yes_and_a_safe_absolute_path(
    ari: Ari, tmp_path: Path, record: str, name: str, refusal: str
) -> None:
    """MixMonitor starts only for CALLREC_RECORD exactly `yes` and a safe absolute .wav path;
    callrec-record's first GotoIf refuses it, and its second tells an unsafe file (logged)
    from a decision not to record, as the conf does."""
    file = name if name == "relative.wav" else f"{tmp_path}/spool/{name}"
    events = await ari.events()
    call = await ari.pbx.place_call("040404040", "041123456", CallerScript(talk_seconds=1))
    await events.expect("StasisStart")
    await ari.decide(call.channel_id, record=record, file=file)
    await events.expect("ChannelDestroyed")
    result = await asyncio.wait_for(call.done, WAIT)
    assert result.answered_by_agent, "the caller still reaches an agent"
    assert result.recorded_file is None and result.recorded_bytes == 0
    assert "MIXMONITOR_FILENAME" not in result.variables
    assert not any(tmp_path.rglob("*")), "nothing was written"
    steps = [e["dialplan_app_data"] for e in events.seen if e["type"] == "ChannelDialplan"]
    assert "0?record:check" in steps and refusal in steps
    assert not any(e.get("dialplan_app") == "MixMonitor" for e in events.seen)


def test_safe_recording_file_pattern() -> None:
    """The dialplan's defence in depth: absolute, plain characters, .wav, never `..`."""
    assert SAFE_RECORDING_FILE.fullmatch("/var/spool/callrec/abc_1.wav")
    for bad in ("rel.wav", "/a/../b.wav", "/a/b.wav;rm", "/a/b c.wav", "/a/b.WAV", "/a/.."):
        assert not SAFE_RECORDING_FILE.fullmatch(bad), bad


async def test_no_app_connected_means_stasis_failed_and_nothing_records(
    ari: Ari, tmp_path: Path
) -> None:
    """Without a WebSocket Stasis fails at once; even preset variables record nothing."""
    pbx = ari.pbx
    file = tmp_path / "preset.wav"
    call = await pbx.place_call("040404040", "041123456", CallerScript(talk_seconds=1))
    result = await asyncio.wait_for(call.done, WAIT)
    assert result.stasis_status == "FAILED" and result.answered_by_agent
    assert result.recorded_file is None
    status, body = await ari.call(
        "POST",
        "/channels",
        json_body={"variables": {"CALLREC_RECORD": "yes", "CALLREC_FILE": str(file)}},
        endpoint="Local/silent@callrec-test-caller",
        extension="040404040",
        context="callrec-inbound",
    )
    assert status == 200
    for _ in range(250):
        if body["id"] not in pbx.channel_ids():
            break
        await asyncio.sleep(0.02)
    assert body["id"] not in pbx.channel_ids()
    assert not file.exists()


# -- callbacks ------------------------------------------------------------------------


async def test_callback_with_notice_runs_the_customers_leg_through_stasis(
    ari: Ari, tmp_path: Path
) -> None:
    """CALLREC_NOTICE=yes: the customer's answered leg enters Stasis as `callee` with the
    agent leg's call id, hears the question, decides, and is recorded while bridged."""
    file = tmp_path / "callee.wav"
    events = await ari.events()
    call = await ari.pbx.place_callback(
        "041555109",
        "service",
        agent_script=CallerScript(talk_seconds=4),
        customer_script=CallerScript(keys=((1.0, "1"),), agent_answers_after=1.0, talk_seconds=6),
    )
    agent = await events.expect("StasisStart")
    assert agent["args"] == ["callback", "041555109", "service"]
    assert agent["channel"]["state"] == "Ring"
    await ari.decide(
        call.channel_id,
        record="no",
        file=None,
        extra={"CALLREC_CALL_ID": CALL_ID, "CALLREC_NOTICE": "yes"},
    )
    callee = await events.expect("StasisStart")
    assert callee["args"] == ["callee", CALL_ID] and callee["channel"]["state"] == "Up"
    customer = callee["channel"]["id"]
    playback = await ari.play(customer)
    await events.expect("ChannelDtmfReceived", digit="1")
    await ari.call("DELETE", f"/playbacks/{playback}")
    await ari.decide(customer, record="yes", file=str(file))
    destroyed: set[str] = set()
    while destroyed != {call.channel_id, customer}:
        destroyed.add((await events.expect("ChannelDestroyed"))["channel"]["id"])
    result = await asyncio.wait_for(call.done, WAIT)
    assert result.recorded_file is None and result.answered_by_agent
    assert result.variables["DIALSTATUS"] == "ANSWER"
    assert result.callee is not None
    assert result.callee.channel_id == customer
    assert result.callee.prompts_played == ("callrec-consent-question",)
    assert result.callee.digits_sent == ("1",)
    assert result.callee.recorded_file == str(file)
    _, samples = read_wav(file)
    assert len(samples) == 4 * 8000, "the agent, who talks less, ends the conversation"
    dials = [e for e in events.seen if e["type"] == "Dial"]
    assert [d["dialstatus"] for d in dials] == ["", "ANSWER"]
    assert dials[0]["dialstring"] == "PJSIP/041555109@trunk"


async def test_callback_without_notice_records_the_agents_leg(ari: Ari, tmp_path: Path) -> None:
    """A callback in the same communication records on the agent's leg; no customer Stasis."""
    file = tmp_path / "agent.wav"
    events = await ari.events()
    call = await ari.pbx.place_callback(
        "041555107",
        None,
        agent_script=CallerScript(talk_seconds=4),
        customer_script=CallerScript(agent_answers_after=0.5, talk_seconds=2),
    )
    start = await events.expect("StasisStart")
    assert start["args"] == ["callback", "041555107", ""]
    await ari.decide(
        call.channel_id, record="yes", file=str(file), extra={"CALLREC_CALL_ID": CALL_ID}
    )
    await events.expect("ChannelDestroyed")
    result = await asyncio.wait_for(call.done, WAIT)
    assert result.callee is None and result.answered_by_agent
    assert [e["type"] for e in events.seen].count("StasisStart") == 1
    _, samples = read_wav(file)
    assert len(samples) == 2 * 8000, "the customer, who talks less, ends the conversation"


async def test_callback_nobody_picks_up(ari: Ari, tmp_path: Path) -> None:
    """The customer never answers: the agent gives up, Dial is CANCEL, only a header records."""
    file = tmp_path / "agent.wav"
    events = await ari.events()
    call = await ari.pbx.place_callback(
        "041555107",
        "sales",
        agent_script=CallerScript(give_up_after=2.0),
        customer_script=CallerScript(agent_answers_after=None),
    )
    await events.expect("StasisStart")
    await ari.decide(call.channel_id, record="yes", file=str(file))
    await events.expect("ChannelDestroyed")
    result = await asyncio.wait_for(call.done, WAIT)
    assert result.variables["DIALSTATUS"] == "CANCEL" and not result.answered_by_agent
    assert [e["dialstatus"] for e in events.seen if e["type"] == "Dial"] == ["", "CANCEL"]
    assert file.stat().st_size == 44


async def test_prompt_durations_come_from_the_catalog_ids(ari: Ari) -> None:
    """A prompt plays for its catalog duration (scaled): the sales notice's 8 s here."""
    events = await ari.events()
    call = await ari.pbx.place_call("040404045", "041123456", CallerScript())
    await events.expect("StasisStart")
    await ari.play(call.channel_id, "callrec-sales-notice")
    await events.expect("PlaybackFinished")
    at = {e["event"]["type"]: e["t"] for e in ari.pbx.log if e["kind"] == "event"}
    played = at["PlaybackFinished"] - at["PlaybackStarted"]
    assert PROMPTS["callrec-sales-notice"] * SCALE - 0.002 <= played < 1.0
