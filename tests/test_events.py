"""Event sinks without a broker: the envelope, the phone-number guard, the bounded queue and
the broker address (URL, password file)."""

from __future__ import annotations

import inspect
import json
import logging
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from mosquitto import free_port

from agi.ports import EventSink as AdapterEventSink
from callrec.events import (
    SCHEMA_VERSION,
    EventKind,
    EventSink,
    MemoryEvents,
    MqttEvents,
    NullEvents,
    Payload,
    RejectedEvent,
    check,
    encode,
    envelope,
    parse_url,
)
from flows.errors import CallrecError, EventsError

NOW = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)
PSEUDONYM = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
NUMBER = "+38640404040"


def unreachable_url() -> str:
    """An MQTT URL on loopback where nothing listens."""
    return f"mqtt://127.0.0.1:{free_port()}"


def test_envelope_has_schema_kind_and_time_then_the_fields() -> None:
    """The envelope names the schema version and kind, stamps `now` in UTC and keeps every field."""
    local = timezone(timedelta(hours=2))
    body = envelope(EventKind.RECORDING_STORED, {"call_id": "c1", "size": 3}, NOW.astimezone(local))
    event_id = body.pop("event_id")
    assert isinstance(event_id, str) and len(event_id) == 32  # for at-least-once de-duplication
    assert body == {
        "schema": SCHEMA_VERSION,
        "kind": "recording/stored",
        "at": "2025-03-14T09:26:53+00:00",
        "call_id": "c1",
        "size": 3,
    }
    assert list(body)[:3] == ["schema", "kind", "at"]


def test_envelope_keeps_the_time_the_caller_gave() -> None:
    """An `at` in the payload (when it happened) wins over the publishing time."""
    body = envelope(EventKind.DECISION, {"at": "2025-03-14T08:00:00+00:00"}, NOW)
    assert body["at"] == "2025-03-14T08:00:00+00:00"


def test_encoded_events_are_compact_utf8_json() -> None:
    """Slovenian text travels as UTF-8 JSON that decodes back to the same object."""
    body = envelope(EventKind.RECORDING_SKIPPED, {"reason": "stranka je izbrala 2 (ne)"}, NOW)
    raw = encode(body)
    assert b"izbrala" in raw
    assert json.loads(raw.decode("utf-8")) == body


@pytest.mark.parametrize(
    "key", ["caller", "Caller_ID", "callerid", "number", "dialed", "dialed_number", "phone",
            "PhoneNumber", "callee", "msisdn"],
)  # fmt: skip
def test_keys_named_like_phone_numbers_are_rejected(key: str) -> None:
    """A field named like a phone number is refused whatever it holds."""
    sink = MemoryEvents()
    sink.publish(EventKind.DECISION, {"call_id": "c1", key: PSEUDONYM})
    assert sink.events == []
    assert sink.rejected == [("decision", sink.rejected[0][1])]
    assert repr(key) in sink.rejected[0][1]


@pytest.mark.parametrize(
    "value",
    [
        NUMBER,
        "+1 202 555 0123",
        "+44-20-7946-0958",
        f"klic z {NUMBER} ob 9h",
        "+123456789012345678",
    ],
)
def test_text_that_looks_like_an_international_number_is_rejected(value: str) -> None:
    """Any text holding `+` and eight or more digits is refused, and the reason omits it."""
    with pytest.raises(RejectedEvent) as caught:
        check(EventKind.CALLBACK_DUE, {"note": value})
    assert "'note'" in str(caught.value)
    assert value not in str(caught.value)


@pytest.mark.parametrize(
    "value",
    ["2025-03-14T09:26:53+01:00", "+1", "+1234567", "1741944413.17", PSEUDONYM, "040404040"],
)
def test_text_that_is_no_international_number_passes(value: str) -> None:
    """Times with offsets, short `+` numbers, Asterisk ids and pseudonyms pass the guard."""
    sink = MemoryEvents()
    sink.publish(EventKind.CALLBACK_DUE, {"note": value})
    assert sink.rejected == []
    assert sink.events == [(EventKind.CALLBACK_DUE, {"note": value})]


def test_the_pseudonym_is_how_to_say_who_called() -> None:
    """`caller_pseudonym` passes although it contains `caller`."""
    sink = MemoryEvents()
    sink.publish("withdrawal/received", {"caller_pseudonym": PSEUDONYM, "withdrawal_id": 7})
    assert sink.of(EventKind.WITHDRAWAL_RECEIVED) == [
        {"caller_pseudonym": PSEUDONYM, "withdrawal_id": 7}
    ]


def test_a_number_in_a_key_is_rejected() -> None:
    """A phone number used as a key is caught like one used as a value."""
    with pytest.raises(RejectedEvent):
        check(EventKind.DECISION, {NUMBER: True})


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"schema": 2}, "envelope"),
        ({"kind": "decision"}, "envelope"),
        ({"when": NOW}, "datetime"),
        ({"ids": [1, 2]}, "list"),
        ({"ratio": float("nan")}, "JSON"),
        ({"at": 1741944413}, "ISO-8601"),
    ],
)
def test_fields_the_envelope_cannot_carry_are_rejected(payload: Payload, reason: str) -> None:
    """Envelope keys, non-scalar values, NaN and a non-text `at` are refused with a reason."""
    with pytest.raises(RejectedEvent, match=reason):
        check(EventKind.SWEEP_FINISHED, payload)


def test_unknown_kinds_are_rejected() -> None:
    """Only the listed kinds have topics; a misspelt one is refused, not invented."""
    sink = MemoryEvents()
    sink.publish("recording/stord", {"call_id": "c1"})
    assert sink.events == []
    assert "unknown event kind" in sink.rejected[0][1]


def test_kinds_given_as_text_become_event_kinds() -> None:
    """The adapters' plain-text kinds map to the same enum members."""
    for kind in EventKind:
        assert check(kind.value, {}) is kind


def test_every_sink_fits_both_ports() -> None:
    """Null, memory and MQTT sinks accept the adapters' text kinds and this package's enum."""
    mqtt = MqttEvents(unreachable_url())
    memory = MemoryEvents()
    sinks: list[EventSink] = [NullEvents(), memory, mqtt]
    adapter_sinks: list[AdapterEventSink] = [NullEvents(), memory, mqtt]
    for sink in sinks:
        sink.publish(EventKind.SWEEP_FINISHED, {"deleted": 0})
    for adapter_sink in adapter_sinks:
        adapter_sink.publish("sweep/finished", {"deleted": 1})
    assert [payload["deleted"] for payload in memory.of(EventKind.SWEEP_FINISHED)] == [0, 1]
    assert mqtt.queued == 2


def test_publish_never_waits_and_a_full_queue_drops_the_oldest() -> None:
    """With no broker, 10,000 events into a queue of 100 keep the newest 100 and count the rest."""
    sink = MqttEvents(unreachable_url(), queue_size=100)
    assert not inspect.iscoroutinefunction(sink.publish)
    for seq in range(10_000):
        sink.publish(EventKind.DECISION, {"seq": seq})
    assert sink.dropped == 10_000 - 100
    assert sink.queued == 100
    assert sink.published == 0
    assert sink.rejected == 0
    assert not sink.connected


def test_rejected_events_are_counted_and_logged_without_the_number(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The MQTT sink drops a leaking event, counts it and logs the key, never the number."""
    sink = MqttEvents(unreachable_url())
    with caplog.at_level(logging.DEBUG):
        sink.publish(EventKind.DECISION, {"caller": NUMBER})
        sink.publish(EventKind.DECISION, {"reason": f"from {NUMBER}"})
        sink.publish(EventKind.DECISION, {"caller_pseudonym": PSEUDONYM})
    assert (sink.dropped, sink.rejected, sink.queued) == (2, 2, 1)
    assert "'caller'" in caplog.text
    assert "'reason'" in caplog.text
    assert "40404040" not in caplog.text


def test_the_queue_takes_events_before_start() -> None:
    """Events published before `start()` wait in the queue instead of being lost."""
    sink = MqttEvents(unreachable_url(), queue_size=5)
    for seq in range(3):
        sink.publish(EventKind.CALLBACK_OVERDUE, {"seq": seq})
    assert (sink.queued, sink.dropped) == (3, 0)


async def test_stop_without_a_broker_counts_what_was_left() -> None:
    """Stopping with the broker unreachable ends the task and counts queued events as dropped."""
    sink = MqttEvents(unreachable_url(), backoff_max=0.2)
    await sink.start()
    for seq in range(4):
        sink.publish(EventKind.RECORDING_DELETED, {"seq": seq})
    await sink.stop(drain_timeout=5.0)
    assert (sink.queued, sink.dropped, sink.published) == (0, 4, 0)
    sink.publish(EventKind.RECORDING_DELETED, {"seq": 4})
    assert (sink.queued, sink.dropped) == (0, 5)
    with pytest.raises(EventsError):
        await sink.start()


def test_url_parts_become_the_broker_address() -> None:
    """User, percent-encoded password, host, port and TLS come from the URL."""
    address = parse_url("mqtts://callrec:p%40ss%3Aword@broker.example:8884")
    assert (address.host, address.port, address.tls) == ("broker.example", 8884, True)
    assert (address.username, address.password) == ("callrec", "p@ss:word")
    assert "p@ss" not in repr(address)
    assert parse_url("mqtt://127.0.0.1").port == 1883
    assert parse_url("mqtts://127.0.0.1/").port == 8883
    assert parse_url("MQTT://[::1]:1884").host == "::1"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "http://broker:1883",
        "tcp://broker",
        "mqtt://",
        "mqtt://:1883",
        "mqtt://broker..example",
        "mqtt://my broker",
        "mqtt://broker:99999",
        "mqtt://broker:port",
        "mqtt://broker/callrec",
        "mqtt://broker?tls=1",
        "mqtt://:secret@broker",
    ],
)
def test_bad_urls_are_an_events_error(url: str) -> None:
    """Each malformed broker URL is an `EventsError` that names the URL but no password."""
    with pytest.raises(EventsError) as caught:
        MqttEvents(url)
    assert isinstance(caught.value, CallrecError)
    assert "secret" not in str(caught.value)


def test_the_password_comes_from_a_file(tmp_path: Path) -> None:
    """The first line of the password file is the password, whitespace trimmed."""
    secret = tmp_path / "mqtt.pw"
    secret.write_text("  s3cr3t-from-file \nsecond line\n", encoding="utf-8")
    address = parse_url("mqtt://callrec@127.0.0.1:1883", secret)
    assert address.password == "s3cr3t-from-file"
    assert "s3cr3t" not in repr(MqttEvents("mqtt://callrec@127.0.0.1", password_file=secret))


@pytest.mark.parametrize(
    ("url", "content", "message"),
    [
        ("mqtt://callrec@127.0.0.1", None, "cannot read"),
        ("mqtt://callrec@127.0.0.1", "\n\n", "empty"),
        ("mqtt://callrec:inline@127.0.0.1", "s3cr3t\n", "give one"),
        ("mqtt://127.0.0.1", "s3cr3t\n", "needs a user name"),
    ],
)
def test_password_file_problems_are_an_events_error(
    tmp_path: Path, url: str, content: str | None, message: str
) -> None:
    """A missing or empty file, a second password or no user name is a clear `EventsError`."""
    secret = tmp_path / "mqtt.pw"
    if content is not None:
        secret.write_text(content, encoding="utf-8")
    with pytest.raises(EventsError, match=message) as caught:
        parse_url(url, secret)
    assert "s3cr3t" not in str(caught.value)
    assert "inline" not in str(caught.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prefix": ""}, "prefix"),
        ({"prefix": "callrec/+"}, "wildcards"),
        ({"prefix": "$SYS"}, "leading"),
        ({"queue_size": 0}, "queue_size"),
        ({"backoff_max": 0.0}, "backoff_max"),
    ],
)
def test_bad_options_are_an_events_error(options: dict[str, object], message: str) -> None:
    """An empty or wildcard prefix, an empty queue or a zero backoff is refused at setup."""
    with pytest.raises(EventsError, match=message):
        MqttEvents(unreachable_url(), **options)  # type: ignore[arg-type]


def test_topics_are_kinds_under_the_prefix() -> None:
    """Each kind's topic is `<prefix>/<kind>`, with stray slashes around the prefix removed."""
    sink = MqttEvents(unreachable_url(), prefix="/site-lj/callrec/")
    assert sink.topic(EventKind.DECISION) == "site-lj/callrec/decision"
    assert {sink.topic(kind).split("/", 2)[2] for kind in EventKind} == {
        "decision",
        "recording/started",
        "recording/skipped",
        "recording/stored",
        "recording/deleted",
        "callback/due",
        "callback/overdue",
        "withdrawal/received",
        "withdrawal/completed",
        "sweep/finished",
    }
