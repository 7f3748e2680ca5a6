"""MQTT events against a real mosquitto on a free loopback port: topics, QoS 1, the envelope,
an unreachable, restarted or hung broker, the phone-number guard, passwords and TLS."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from mosquitto import Mosquitto, make_password_file, make_tls_files, requires_mosquitto

from callrec.events import SCHEMA_VERSION, EventKind, MqttEvents

pytestmark = [pytest.mark.mqtt, requires_mosquitto]

WAIT = 10.0  # seconds any single condition may take before the test fails
NUMBER = "+38640404040"
PSEUDONYM = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as running:
        yield running


class Collector:
    """A subscriber with a persistent session (clean_session=False): QoS 1 messages for it
    are kept by the broker while it is away, including across a broker restart.

    After a restart the broker may send again, under the same message id, what it had sent
    just before stopping (its record of our PUBACKs was not saved yet); `distinct` holds each
    broker message once, so a second copy there can only come from the publisher.
    """

    def __init__(self, broker: Mosquitto, topic: str, **client_options: Any) -> None:
        self.broker = broker
        self.topic = topic
        self.client_options = client_options
        self.messages: list[aiomqtt.Message] = []
        self.distinct: list[aiomqtt.Message] = []
        self._seen: set[int] = set()
        self.subscribed = asyncio.Event()
        self._arrived = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self.broker.host,
                    self.broker.port,
                    identifier="collector",
                    clean_session=False,
                    **self.client_options,
                ) as client:
                    await client.subscribe(self.topic, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        self.messages.append(message)
                        if message.mid not in self._seen:
                            self._seen.add(message.mid)
                            self.distinct.append(message)
                        self._arrived.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)  # the broker is restarting: try again soon

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        """The first `count` distinct payloads, decoded, once they have all arrived."""
        async with asyncio.timeout(WAIT):
            while len(self.distinct) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return [self.body(message) for message in self.distinct[:count]]

    @staticmethod
    def body(message: aiomqtt.Message) -> dict[str, Any]:
        assert isinstance(message.payload, bytes)
        decoded: dict[str, Any] = json.loads(message.payload.decode("utf-8"))
        return decoded


@asynccontextmanager
async def collecting(
    broker: Mosquitto, topic: str = "callrec/#", **client_options: Any
) -> AsyncIterator[Collector]:
    collector = Collector(broker, topic, **client_options)
    task = asyncio.create_task(collector.run())
    try:
        async with asyncio.timeout(WAIT):
            await collector.subscribed.wait()
        yield collector
    finally:
        task.cancel()
        await asyncio.wait({task})


@asynccontextmanager
async def running(sink: MqttEvents) -> AsyncIterator[MqttEvents]:
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop(drain_timeout=WAIT)


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until `condition()` holds."""
    try:
        async with asyncio.timeout(WAIT):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {WAIT} s: {what}") from None


async def test_events_arrive_on_their_topics_with_qos1_and_the_envelope(broker: Mosquitto) -> None:
    """One event of each kind reaches a subscriber on `<prefix>/<kind>`, at QoS 1, enveloped."""
    async with (
        collecting(broker, "site-lj/callrec/#") as collector,
        running(MqttEvents(broker.url, prefix="site-lj/callrec", client_id="ctl-1")) as sink,
    ):
        for seq, kind in enumerate(EventKind):
            sink.publish(kind, {"seq": seq, "caller_pseudonym": PSEUDONYM, "late": None})
        bodies = await collector.wait_for(len(EventKind))
        await eventually(lambda: sink.published == len(EventKind), "every PUBACK counted")
    assert [str(message.topic) for message in collector.messages] == [
        f"site-lj/callrec/{kind.value}" for kind in EventKind
    ]
    assert {message.qos for message in collector.messages} == {1}
    for seq, (kind, body) in enumerate(zip(EventKind, bodies, strict=True)):
        assert body.pop("at").endswith("+00:00")
        assert len(body.pop("event_id")) == 32
        assert body == {
            "schema": SCHEMA_VERSION,
            "kind": kind.value,
            "seq": seq,
            "caller_pseudonym": PSEUDONYM,
            "late": None,
        }
    assert (sink.dropped, sink.published, sink.queued) == (0, len(EventKind), 0)
    assert "ctl-1" in broker.log()


async def test_start_returns_with_the_broker_down_and_delivers_once_it_is_up(
    tmp_path: Path,
) -> None:
    """With no broker, `start()` returns, events wait in the queue, and arrive once it starts."""
    broker = Mosquitto(tmp_path / "broker")
    # The subscriber's persistent session exists before the sink can reach the broker: the
    # sink reconnects within 0.2 s of the start, perhaps before a new subscriber would have
    # subscribed, and the broker keeps QoS 1 messages only for sessions it knows.
    with broker:
        async with collecting(broker):
            pass
    sink = MqttEvents(broker.url, backoff_max=0.2)
    async with running(sink):
        assert not sink.connected
        for seq in range(3):
            sink.publish(EventKind.RECORDING_STARTED, {"call_id": f"c{seq}"})
        assert (sink.queued, sink.dropped) == (3, 0)
        await asyncio.sleep(0.3)  # a few refused attempts: the queue must survive them
        assert (sink.queued, sink.published, sink.connected) == (3, 0, False)
        with broker:
            await eventually(lambda: sink.published == 3, "3 acknowledged")
            assert sink.connected
            async with collecting(broker) as collector:
                bodies = await collector.wait_for(3)
            assert [body["call_id"] for body in bodies] == ["c0", "c1", "c2"]


async def test_a_full_queue_delivers_the_newest_events(tmp_path: Path) -> None:
    """10,000 events with no broker: the 100 newest are delivered in order, the rest counted."""
    broker = Mosquitto(tmp_path / "broker")
    sink = MqttEvents(broker.url, queue_size=100, backoff_max=0.2)
    for seq in range(10_000):
        sink.publish(EventKind.DECISION, {"seq": seq})
    assert (sink.dropped, sink.queued) == (10_000 - 100, 100)
    with broker:
        async with collecting(broker) as collector, running(sink):
            bodies = await collector.wait_for(100)
    assert [body["seq"] for body in bodies] == list(range(9_900, 10_000))
    assert (sink.published, sink.dropped) == (100, 9_900)


async def test_events_queued_during_a_broker_restart_are_delivered(broker: Mosquitto) -> None:
    """Stop the broker mid-run, publish meanwhile, start it again: every event arrives in order."""
    async with (
        collecting(broker) as collector,
        running(MqttEvents(broker.url, backoff_max=0.2)) as sink,
    ):
        for seq in range(5):
            sink.publish(EventKind.CALLBACK_DUE, {"seq": seq})
        await collector.wait_for(5)
        broker.stop()
        await eventually(lambda: not sink.connected, "the idle sink notices the broker is gone")
        for seq in range(5, 10):
            sink.publish(EventKind.CALLBACK_DUE, {"seq": seq})
        assert sink.queued == 5
        broker.start()
        bodies = await collector.wait_for(10)
        await eventually(lambda: sink.published == 10, "10 acknowledged")
        assert sink.connected
    assert [body["seq"] for body in bodies] == list(range(10))
    assert sink.dropped == 0


async def test_a_hung_broker_fills_the_queue_but_never_blocks_publish(broker: Mosquitto) -> None:
    """While the broker is frozen, publish() still returns, the queue stays bounded, and the kept
    events arrive once it wakes up."""
    async with (
        collecting(broker) as collector,
        running(MqttEvents(broker.url, queue_size=100, backoff_max=0.2)) as sink,
    ):
        await eventually(lambda: sink.connected, "connected")
        broker.pause()
        try:
            sink.publish(EventKind.WITHDRAWAL_RECEIVED, {"seq": 0})
            await asyncio.sleep(0.05)  # the sender takes event 0 and waits for its PUBACK
            for seq in range(1, 301):
                sink.publish(EventKind.WITHDRAWAL_RECEIVED, {"seq": seq})
            assert (sink.queued, sink.dropped, sink.published) == (101, 200, 0)
        finally:
            broker.resume()
        bodies = await collector.wait_for(101)
        await eventually(lambda: sink.published == 101, "101 acknowledged")
    assert [body["seq"] for body in bodies] == [0, *range(201, 301)]


async def test_phone_numbers_never_reach_the_broker(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """Events with a number in a key name or a value are dropped; the pseudonym goes through."""
    async with (
        collecting(broker, "#") as collector,
        running(MqttEvents(broker.url)) as sink,
    ):
        with caplog.at_level(logging.DEBUG):
            sink.publish(EventKind.DECISION, {"caller": NUMBER})
            sink.publish(EventKind.DECISION, {"phone": PSEUDONYM})
            sink.publish(EventKind.DECISION, {"note": f"call back {NUMBER}"})
            sink.publish(EventKind.DECISION, {"caller_pseudonym": PSEUDONYM})
            bodies = await collector.wait_for(1)
            await eventually(lambda: sink.published == 1, "the allowed event acknowledged")
    assert [body["caller_pseudonym"] for body in bodies] == [PSEUDONYM]
    assert len(collector.messages) == 1
    assert (sink.rejected, sink.dropped) == (3, 3)
    assert "40404040" not in caplog.text
    assert "40404040" not in broker.log()


async def test_stop_drains_what_is_queued(broker: Mosquitto) -> None:
    """Events published just before `stop()` are delivered before it disconnects."""
    sink = MqttEvents(broker.url)
    async with collecting(broker) as collector:
        await sink.start()
        await eventually(lambda: sink.connected, "connected")
        for seq in range(200):
            sink.publish(EventKind.SWEEP_FINISHED, {"seq": seq})
        await sink.stop(drain_timeout=WAIT)
        assert (sink.published, sink.dropped, sink.queued, sink.connected) == (200, 0, 0, False)
        bodies = await collector.wait_for(200)
    assert [body["seq"] for body in bodies] == list(range(200))


async def test_a_password_file_logs_in_and_the_password_is_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The right password from a file connects; a wrong one keeps retrying; neither is logged."""
    passwords = make_password_file(
        tmp_path / "passwd", {"callrec": "right-horse-battery", "reader": "reader-pw"}
    )
    right, wrong = tmp_path / "right.pw", tmp_path / "wrong.pw"
    right.write_text("right-horse-battery\n", encoding="utf-8")
    wrong.write_text("wrong-staple-guess\n", encoding="utf-8")
    url = "mqtt://callrec@127.0.0.1:{port}"
    with (
        Mosquitto(tmp_path / "broker", password_file=passwords) as broker,
        caplog.at_level(logging.DEBUG),
    ):
        refused = MqttEvents(url.format(port=broker.port), password_file=wrong, backoff_max=0.2)
        async with running(refused):
            refused.publish(EventKind.DECISION, {"call_id": "c0"})
            await eventually(
                lambda: "cannot reach the broker" in caplog.text, "a refused login is logged"
            )
            assert not refused.connected
        assert (refused.published, refused.dropped) == (0, 1)
        async with (
            collecting(broker, username="reader", password="reader-pw") as collector,
            running(
                MqttEvents(url.format(port=broker.port), password_file=right, client_id="ctl-pw")
            ) as sink,
        ):
            sink.publish(EventKind.DECISION, {"call_id": "c1"})
            bodies = await collector.wait_for(1)
        assert [body["call_id"] for body in bodies] == ["c1"]
        assert sink.published == 1
    for secret in ("right-horse-battery", "wrong-staple-guess"):
        assert secret not in caplog.text
        assert secret not in repr(sink)


async def test_mqtts_verifies_the_broker_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Over mqtts:// an unknown CA is refused; with the CA trusted, events arrive encrypted."""
    tls = make_tls_files(tmp_path / "tls")
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with Mosquitto(tmp_path / "broker", tls=tls) as broker:
        assert broker.url.startswith("mqtts://")
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        untrusted = MqttEvents(broker.url, backoff_max=0.2)
        with caplog.at_level(logging.WARNING, logger="callrec.events"):
            async with running(untrusted):
                untrusted.publish(EventKind.DECISION, {"call_id": "c0"})
                await eventually(lambda: "CERTIFICATE_VERIFY_FAILED" in caplog.text, "refused")
                assert not untrusted.connected
        monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca))  # what an operator's CA bundle does
        reader_tls = ssl.create_default_context(cafile=str(tls.ca))
        async with (
            collecting(broker, tls_context=reader_tls) as collector,
            running(MqttEvents(broker.url)) as sink,
        ):
            sink.publish(EventKind.DECISION, {"call_id": "c1"})
            bodies = await collector.wait_for(1)
    assert [body["call_id"] for body in bodies] == ["c1"]
    assert sink.published == 1
