"""asterisk-conf/ over real SIP: the controller behind chan_pjsip, with real softphones.

Opt-in, like the other live tests. It needs two Asterisks built with chan_pjsip:
- the PBX, running asterisk-conf/ as shipped (render-config.sh, nothing added), its ARI at
  CALLREC_TEST_SIP_ARI_URL (user CALLREC_TEST_SIP_ARI_USER, default `callrec`, password
  CALLREC_TEST_SIP_ARI_PASSWORD), its MixMonitor writing into CALLREC_TEST_SIP_SPOOL;
- the peer, running tests/sip_peer/ (rendered with render-config.sh): it registers as the
  softphones `customer` and `agent` with digest auth, sends RFC 4733 digits and talks RTP,
  the customer a 500 Hz tone, the agent 1300 Hz. Its ARI is CALLREC_TEST_SIP_PEER_ARI_URL
  (user CALLREC_TEST_SIP_PEER_ARI_USER, default `peer`, password
  CALLREC_TEST_SIP_PEER_ARI_PASSWORD).
The test runs `callrec serve` from this checkout against the PBX with a store of its own,
so no other controller may be attached to the PBX's `callrec` application.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

PBX_URL = os.environ.get("CALLREC_TEST_SIP_ARI_URL", "")
PBX_USER = os.environ.get("CALLREC_TEST_SIP_ARI_USER", "callrec")
PBX_PASSWORD = os.environ.get("CALLREC_TEST_SIP_ARI_PASSWORD", "")
PEER_URL = os.environ.get("CALLREC_TEST_SIP_PEER_ARI_URL", "")
PEER_USER = os.environ.get("CALLREC_TEST_SIP_PEER_ARI_USER", "peer")
PEER_PASSWORD = os.environ.get("CALLREC_TEST_SIP_PEER_ARI_PASSWORD", "")
SPOOL = os.environ.get("CALLREC_TEST_SIP_SPOOL", "")
OBSERVER = "callrec-sip-observer"

CUSTOMER = "+38631555123"  # pjsip-test-parties.conf: the customer softphone's caller ID
SERVICE_DID = "040404040"
CENTER_NUMBER = "040404040"  # extensions.conf: CALLREC_CALLBACK_NUMBER
CUSTOMER_TONE, AGENT_TONE = 500.0, 1300.0  # tests/sip_peer/extensions.conf
WAIT = 60.0  # seconds for anything a call does

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        not (PBX_URL and PEER_URL and SPOOL),
        reason="CALLREC_TEST_SIP_ARI_URL, CALLREC_TEST_SIP_PEER_ARI_URL and "
        "CALLREC_TEST_SIP_SPOOL name no SIP PBX and peer",
    ),
]

Event = dict[str, Any]


class Ari:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url.rstrip("/")

    async def request(self, method: str, path: str, **params: str) -> Any:
        async with self.session.request(method, self.url + path, params=params) as r:
            body = await r.text()
            assert r.status < 300, f"{method} {path}: {r.status} {body}"
            return json.loads(body) if body else None

    async def status(self, path: str) -> int:
        async with self.session.get(self.url + path) as r:
            return r.status

    async def set_global(self, name: str, value: str) -> None:
        await self.request("POST", "/asterisk/variable", variable=name, value=value)

    async def get_global(self, name: str) -> str:
        return str((await self.request("GET", "/asterisk/variable", variable=name))["value"])


def session_for(user: str, password: str) -> aiohttp.ClientSession:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return aiohttp.ClientSession(
        headers={"Authorization": f"Basic {token}"}, timeout=aiohttp.ClientTimeout(total=30)
    )


@dataclass
class Observed:
    """Every event of an application subscribed to everything on the PBX."""

    seen: list[Event] = field(default_factory=list)

    def varsets(self, name: str) -> list[Event]:
        return [e for e in self.seen if e["type"] == "ChannelVarset" and e["variable"] == name]


@dataclass
class Rig:
    pbx: Ari
    peer: Ari
    observed: Observed
    data_dir: Path
    env: dict[str, str]

    def cli(self, *args: str) -> Any:
        """`callrec ... --json` on the controller's store."""
        result = subprocess.run(
            [sys.executable, "-m", "callrec.cli", *args, "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    async def wait_for(self, what: str, probe: Any) -> Any:
        deadline = asyncio.get_running_loop().time() + WAIT
        while True:
            found = await asyncio.to_thread(probe)
            if found:
                return found
            assert asyncio.get_running_loop().time() < deadline, f"{what} did not happen"
            await asyncio.sleep(0.5)

    async def call_from_peer(self, endpoint: str, context: str, exten: str) -> str:
        """The peer's softphone places a call; the dialplan runs once the far end answers."""
        body = await self.peer.request(
            "POST", "/channels",
            endpoint=endpoint, context=context, extension=exten, priority="1", timeout="30",
        )  # fmt: skip
        return str(body["id"])

    async def hang_up_on_peer(self, channel: str) -> None:
        with contextlib.suppress(AssertionError):
            await self.peer.request("DELETE", f"/channels/{channel}")


async def wait_registered(peer: Ari) -> None:
    """Both softphones are registered at the PBX (their endpoints on the peer reachable)."""
    for endpoint in ("as-customer", "as-agent"):
        body = await peer.request("GET", f"/endpoints/PJSIP/{endpoint}")
        assert body["state"] != "unknown", body


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, recording_format: str = "wav") -> AsyncIterator[Rig]:
    """`callrec serve` from this checkout on the PBX, an observer there, the peer's ARI."""
    data_dir = tmp_path / "data"
    config = tmp_path / "callrec.toml"
    config.write_text(
        f'[storage]\nspool_dir = "{SPOOL}"\nrecording_format = "{recording_format}"\n',
        encoding="utf-8",
    )
    env = {
        **os.environ,
        "CALLREC_CONFIG": str(config),
        "CALLREC_DATA_DIR": str(data_dir),
        "CALLREC_ARI_URL": PBX_URL,
        "CALLREC_ARI_USER": PBX_USER,
        "CALLREC_ARI_PASSWORD": PBX_PASSWORD,
    }
    env.pop("CALLREC_MQTT_URL", None)
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen(
        [sys.executable, "-m", "callrec.cli", "serve"], env=env, stdout=log, stderr=log
    )
    async with session_for(PBX_USER, PBX_PASSWORD) as pbx_s, session_for(
        PEER_USER, PEER_PASSWORD
    ) as peer_s:  # fmt: skip
        pbx, peer = Ari(pbx_s, PBX_URL), Ari(peer_s, PEER_URL)
        observed = Observed()
        parts = urlsplit(PBX_URL)
        scheme = "wss" if parts.scheme == "https" else "ws"
        ws = await pbx_s.ws_connect(
            f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/events"
            f"?app={OBSERVER}&subscribeAll=true"
        )

        async def pump() -> None:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    observed.seen.append(json.loads(message.data))

        pumping = asyncio.create_task(pump())
        try:
            await wait_registered(peer)
            await peer.set_global("PEER_AGENT", "answer")
            the_rig = Rig(pbx, peer, observed, data_dir, env)
            await the_rig.wait_for(
                "the controller's ARI application",
                lambda: (
                    serve.poll() is None
                    and (tmp_path / "serve.log").read_text().count("callrec serve: app")
                ),
            )
            assert await pbx.status("/applications/callrec") == 200
            yield the_rig
        finally:
            pumping.cancel()
            await ws.close()
            serve.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(serve.wait, 30)
            finally:
                log.close()


def tone_level(path: Path, frequency: float) -> float:
    """The mean amplitude of `frequency` in a mono 16-bit WAV (Goertzel over the file)."""
    with wave.open(str(path)) as w:
        rate, frames = w.getframerate(), w.readframes(w.getnframes())
    samples = memoryview(frames).cast("h")
    coefficient = 2 * math.cos(2 * math.pi * frequency / rate)
    previous = before = 0.0
    for sample in samples:
        previous, before = sample + coefficient * previous - before, previous
    power = previous * previous + before * before - coefficient * previous * before
    return math.sqrt(max(power, 0.0)) / max(len(samples), 1)


def assert_both_parties_audible(path: Path) -> None:
    customer, agent = tone_level(path, CUSTOMER_TONE), tone_level(path, AGENT_TONE)
    silence = tone_level(path, 900.0)  # neither party's tone
    assert customer > 50 * max(silence, 1.0), (customer, silence)
    assert agent > 50 * max(silence, 1.0), (agent, silence)


@pytest.mark.parametrize(("recording_format", "rate"), [("wav", 8000), ("wav16", 16000)])
async def test_sip_consent_by_rfc4733_records_both_parties(
    tmp_path: Path, recording_format: str, rate: int
) -> None:
    """A softphone calls the service line, presses 1 as an RFC 4733 event, talks to the agent
    softphone (G.722); the stored recording carries the customer's number and both parties'
    audio, at 16 kHz when the controller is configured for wav16."""
    async with rig(tmp_path, recording_format) as r:
        channel = await r.call_from_peer(
            f"PJSIP/{SERVICE_DID}@as-customer", "peer-customer", "press1"
        )
        await r.wait_for("the agent answering", lambda: r.observed.varsets("CALLREC_AGENT"))
        await asyncio.sleep(8)  # the conversation
        await r.hang_up_on_peer(channel)
        recordings = await r.wait_for("the recording", lambda: r.cli("recordings", "list"))
    assert len(recordings) == 1
    recording = recordings[0]
    assert (recording["line"], recording["legal_basis"]) == ("service", "consent")
    assert (recording["caller"], recording["dialed"]) == (CUSTOMER, "+386" + SERVICE_DID[1:])
    assert recording["path"].endswith(".wav")
    with wave.open(recording["path"]) as stored:
        assert stored.getframerate() == rate
    assert_both_parties_audible(Path(recording["path"]))


async def test_sip_missed_call_is_called_back_through_the_trunk_linked_without_notice(
    tmp_path: Path,
) -> None:
    """A softphone's call nobody answers is called back by the agent softphone through
    `trunk` within the hour: no notice, recorded with both parties, linked to the missed
    call, and the customer's phone is shown the center's number."""
    async with rig(tmp_path) as r:
        await r.peer.set_global("PEER_AGENT", "busy")
        await r.call_from_peer(f"PJSIP/{SERVICE_DID}@as-customer", "peer-customer", "press1-giveup")
        due = await r.wait_for("the missed call", lambda: r.cli("callbacks"))
        assert [(d["caller"], d["line"]) for d in due] == [(CUSTOMER, "service")]
        missed = due[0]["call_id"]

        await r.peer.set_global("PEER_AGENT", "answer")
        await r.peer.set_global("PEER_CALLBACK_NUMBER", "")
        agent = await r.call_from_peer("PJSIP/031555123@as-agent", "peer-agent", "talk")
        await r.wait_for(
            "the callback's recording", lambda: r.observed.varsets("MIXMONITOR_FILENAME")
        )
        await asyncio.sleep(8)  # the conversation
        shown = await r.peer.get_global("PEER_CALLBACK_NUMBER")
        shown_from = await r.peer.get_global("PEER_CALLBACK_FROM")
        await r.hang_up_on_peer(agent)
        recordings = await r.wait_for(
            "the callback's recording",
            lambda: (listed := r.cli("recordings", "list"))[1:] and listed,
        )
        remaining = r.cli("callbacks")
        notices = [e for e in r.observed.varsets("CALLREC_NOTICE") if e["value"] == "yes"]
    assert shown == CENTER_NUMBER
    assert f"sip:{CENTER_NUMBER}@" in shown_from
    assert notices == []  # the customer's leg never went to the notice
    by_call = {r["call_id"]: r for r in recordings}
    assert by_call.pop(missed)["status"] == "empty"  # consented, but nobody talked
    [recording] = by_call.values()
    assert (recording["status"], recording["linked_to"]) == ("stored", missed)
    assert recording["dialed"] == CUSTOMER
    assert remaining == []
    assert_both_parties_audible(Path(recording["path"]))
