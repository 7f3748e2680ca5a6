"""The ARI client's REST side against real aiohttp servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web

from agi.ari import AriClient
from flows.errors import AsteriskError, ChannelGone, ConfigError, ProtocolViolation

USER = "callrec"
PASSWORD = "s3cr3t-Pa55-never-logged"  # a test credential that must not leak

Reply = tuple[int, Any]  # status, JSON body (None: empty)


@dataclass
class Seen:
    method: str
    raw_path: str
    query: dict[str, str]
    authorization: str | None
    body: bytes


@dataclass
class FakeAri:
    """A real HTTP server: records every request and answers with `respond`."""

    respond: Callable[[web.Request], Awaitable[Reply]]
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            Seen(
                request.method,
                request.raw_path,
                dict(request.query),
                request.headers.get("Authorization"),
                await request.read(),
            )
        )
        status, body = await self.respond(request)
        if body is None:
            return web.Response(status=status)
        text = body if isinstance(body, str) else json.dumps(body)
        return web.Response(status=status, text=text, content_type="application/json")


def _constant(status: int, body: Any = None) -> Callable[[web.Request], Awaitable[Reply]]:
    async def respond(request: web.Request) -> Reply:
        return status, body

    return respond


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[FakeAri]]]:
    runners: list[web.AppRunner] = []

    async def start(
        respond: Callable[[web.Request], Awaitable[Reply]],
        ssl_context: ssl.SSLContext | None = None,
    ) -> FakeAri:
        fake = FakeAri(respond)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", fake.handle)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        fake.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}/ari"
        return fake

    yield start
    for runner in runners:
        await runner.cleanup()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _path_parts(raw_path: str) -> list[str]:
    return [unquote(part) for part in raw_path.split("?")[0].split("/")]


async def test_requests_carry_basic_auth_and_no_secret_in_the_url(serve: Any) -> None:
    """Credentials travel as an HTTP Basic header, never as a query parameter."""
    fake = await serve(_constant(204))
    async with AriClient(fake.url, USER, PASSWORD, "callrec") as client:
        await client.answer("1795597767.8")
    [seen] = fake.seen
    assert seen.method == "POST"
    assert seen.raw_path == "/ari/channels/1795597767.8/answer"
    assert seen.authorization == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert "api_key" not in seen.query
    assert PASSWORD not in seen.raw_path


async def test_base_url_with_trailing_slash_is_the_same(serve: Any) -> None:
    """`.../ari/` and `.../ari` address the same paths."""
    fake = await serve(_constant(200, []))
    async with AriClient(fake.url + "/", USER, PASSWORD, "callrec") as client:
        assert await client.list_channels() == []
    assert fake.seen[0].raw_path == "/ari/channels"


@pytest.mark.parametrize(
    "body",
    [{"message": "Channel not found"}, {"message": "Provided channel was not found"}, "gone", None],
)
async def test_404_is_channel_gone_whatever_the_message(serve: Any, body: Any) -> None:
    """A 404 after a hang-up raises ChannelGone with the channel as call context."""
    fake = await serve(_constant(404, body))
    async with AriClient(fake.url, USER, PASSWORD, "callrec") as client:
        with pytest.raises(ChannelGone) as caught:
            await client.answer("1795597772.10")
        with pytest.raises(ChannelGone):
            await client.set_variable("1795597772.10", "CALLREC_RECORD", "yes")
        with pytest.raises(ChannelGone):
            await client.continue_in_dialplan("1795597772.10")
        with pytest.raises(ChannelGone):
            await client.play("1795597772.10", "sound:sl/x", lang="sl", playback_id="p1")
    assert caught.value.status == 404
    assert caught.value.call_id == "1795597772.10"


async def test_500_is_an_asterisk_error_with_its_status(serve: Any) -> None:
    """A server error is an AsteriskError carrying 500 and Asterisk's message, not ChannelGone."""
    fake = await serve(_constant(500, {"message": "Internal Server Error"}))
    async with AriClient(fake.url, USER, PASSWORD, "callrec") as client:
        with pytest.raises(AsteriskError) as caught:
            await client.answer("c1")
        with pytest.raises(AsteriskError):
            await client.hangup("c1")
        with pytest.raises(AsteriskError):
            await client.stop_playback("p1")
    assert not isinstance(caught.value, ChannelGone)
    assert caught.value.status == 500
    assert "Internal Server Error" in str(caught.value)
    assert "c1" in str(caught.value)


async def test_timeout_is_an_asterisk_error_within_the_limit(serve: Any) -> None:
    """A server that does not answer in time gives AsteriskError after about `timeout`."""

    async def slow(request: web.Request) -> Reply:
        await asyncio.sleep(5)
        return 204, None

    fake = await serve(slow)
    async with AriClient(fake.url, USER, PASSWORD, "callrec", timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(AsteriskError) as caught:
            await client.answer("c1")
        elapsed = time.monotonic() - started
    assert 0.25 < elapsed < 2.0
    assert caught.value.status is None
    assert "no answer within 0.3 s" in str(caught.value)


async def test_refused_connection_is_an_asterisk_error() -> None:
    """Nothing listening on the port gives AsteriskError, quickly, naming host and port."""
    port = _free_port()
    async with AriClient(f"http://127.0.0.1:{port}/ari", USER, PASSWORD, "callrec") as client:
        with pytest.raises(AsteriskError) as caught:
            await client.ping()
    assert caught.value.status is None
    assert f"127.0.0.1:{port}" in str(caught.value)


@pytest.mark.parametrize("channel_id", ["a/b", "x?y=1&z", "100%", "sp ace#frag", "ü/..", ".."])
async def test_every_path_part_and_parameter_is_percent_encoded(
    serve: Any, channel_id: str
) -> None:
    """Ids with `/`, `?`, `%`, `#` stay one path segment and arrive unchanged; so do values."""
    fake = await serve(_constant(204))
    value = "a&b=c d+e%f/?"
    async with AriClient(fake.url, USER, PASSWORD, "callrec") as client:
        await client.set_variable(channel_id, "CALLREC_FILE", value)
    [seen] = fake.seen
    parts = _path_parts(seen.raw_path)
    assert parts == ["", "ari", "channels", channel_id, "variable"]
    assert seen.query == {"variable": "CALLREC_FILE", "value": value}


async def test_play_with_our_id_uses_the_path_form_and_returns_it(serve: Any) -> None:
    """play() with a playback id posts to /play/{playbackId}; without, to /play; both return
    the id Asterisk reports."""

    async def playback(request: web.Request) -> Reply:
        parts = _path_parts(request.raw_path)
        return 201, {"id": parts[-1] if len(parts) == 6 else "assigned-by-asterisk"}

    fake = await serve(playback)
    async with AriClient(fake.url, USER, PASSWORD, "callrec") as client:
        ours = await client.play("c1", "sound:sl/consent", lang="sl", playback_id="pb/1")
        theirs = await client.play("c1", "sound:sl/consent")
    assert ours == "pb/1"
    assert theirs == "assigned-by-asterisk"
    assert fake.seen[0].raw_path.startswith("/ari/channels/c1/play/pb%2F1?")
    assert fake.seen[0].query == {"media": "sound:sl/consent", "lang": "sl"}
    assert fake.seen[1].query == {"media": "sound:sl/consent"}


async def test_play_without_an_id_in_the_answer_is_a_protocol_violation(serve: Any) -> None:
    """A 201 whose body has no playback id is reported, not returned as garbage."""
    fake = await serve(_constant(201, {"state": "queued"}))
    async with AriClient(fake.url, USER, PASSWORD, "callrec") as client:
        with pytest.raises(ProtocolViolation):
            await client.play("c1", "sound:x")


async def test_stop_playback_and_hangup_are_quiet_about_404(serve: Any) -> None:
    """A playback that already finished or a channel already gone is not an error there."""
    fake = await serve(_constant(404, {"message": "Channel not found"}))
    async with AriClient(fake.url, USER, PASSWORD, "callrec") as client:
        await client.stop_playback("458d3bd8")
        await client.hangup("1795597774.12")
    assert [(s.method, s.raw_path.split("?")[0]) for s in fake.seen] == [
        ("DELETE", "/ari/playbacks/458d3bd8"),
        ("DELETE", "/ari/channels/1795597774.12"),
    ]
    assert fake.seen[1].query == {"reason": "normal"}


async def test_get_variable_tells_a_missing_variable_from_a_missing_channel(serve: Any) -> None:
    """Asterisk's 404 "Provided variable was not found" is None; its channel 404 is ChannelGone."""

    async def variables(request: web.Request) -> Reply:
        channel = _path_parts(request.raw_path)[3]
        if channel == "gone":
            return 404, {"message": "Provided channel was not found"}
        if request.query["variable"] == "UNSET":
            return 404, {"message": "Provided variable was not found"}
        return 200, {"value": f"{channel}:{request.query['variable']}"}

    fake = await serve(variables)
    async with AriClient(fake.url, USER, PASSWORD, "callrec") as client:
        assert await client.get_variable("c1", "BRIDGEPEER") == "c1:BRIDGEPEER"
        assert await client.get_variable("c1", "UNSET") is None
        with pytest.raises(ChannelGone):
            await client.get_variable("gone", "BRIDGEPEER")


async def test_subscribe_maps_a_vanished_channel_but_not_a_missing_application(
    serve: Any,
) -> None:
    """422 "Event source does not exist" is ChannelGone; 404 for our app is AsteriskError."""

    async def subscription(request: web.Request) -> Reply:
        if request.query["eventSource"] == "channel:gone":
            return 422, {"message": "Event source does not exist"}
        if _path_parts(request.raw_path)[3] != "callrec":
            return 404, {"message": "Application not found"}
        return 200, {"name": "callrec", "channel_ids": ["c1"]}

    fake = await serve(subscription)
    async with AriClient(fake.url, USER, PASSWORD, "callrec") as client:
        await client.subscribe("c1")
        with pytest.raises(ChannelGone):
            await client.subscribe("gone")
    async with AriClient(fake.url, USER, PASSWORD, "other") as client:
        with pytest.raises(AsteriskError) as caught:
            await client.subscribe("c1")
    assert not isinstance(caught.value, ChannelGone)
    assert caught.value.status == 404
    assert fake.seen[0].query == {"eventSource": "channel:c1"}


async def test_originate_sends_parameters_and_variables_body(serve: Any) -> None:
    """originate() puts its options in the query and the variables in a JSON body."""
    fake = await serve(_constant(200, {"id": "1795597767.8", "name": "Local/x"}))
    async with AriClient(fake.url, USER, PASSWORD, "callrec") as client:
        channel = await client.originate(
            "Local/bargein1@caller-sim",
            extension="040404040",
            context="inbound",
            priority=1,
            caller_id="Ana <041123456>",
            variables={"CALLREC_CALL_ID": "c-1"},
            timeout=30,
        )
    assert channel["id"] == "1795597767.8"
    [seen] = fake.seen
    assert seen.query == {
        "endpoint": "Local/bargein1@caller-sim",
        "extension": "040404040",
        "context": "inbound",
        "priority": "1",
        "callerId": "Ana <041123456>",
        "timeout": "30",
    }
    assert json.loads(seen.body) == {"variables": {"CALLREC_CALL_ID": "c-1"}}


async def test_malformed_success_bodies_are_protocol_violations(serve: Any) -> None:
    """A 200 that is not JSON, or JSON of the wrong shape, raises ProtocolViolation."""
    fake = await serve(_constant(200, "<html>proxy</html>"))
    async with AriClient(fake.url, USER, PASSWORD, "callrec") as client:
        with pytest.raises(ProtocolViolation) as caught:
            await client.list_channels()
        assert caught.value.status == 200
    shaped = await serve(_constant(200, [1, 2]))
    async with AriClient(shaped.url, USER, PASSWORD, "callrec") as client:
        with pytest.raises(ProtocolViolation):
            await client.list_channels()
        with pytest.raises(ProtocolViolation):
            await client.ping()


async def test_refused_credentials_name_the_user_only(serve: Any) -> None:
    """A 401 says which user was refused and never shows the password."""
    fake = await serve(_constant(401, {"message": "Authentication required"}))
    async with AriClient(fake.url, USER, PASSWORD, "callrec") as client:
        with pytest.raises(AsteriskError) as caught:
            await client.ping()
    assert caught.value.status == 401
    assert repr(USER) in str(caught.value)
    assert PASSWORD not in str(caught.value)


async def test_password_is_absent_from_logs_errors_and_reprs(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Across successes, failures and WebSocket retries, no log line, error or repr holds the
    password."""
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    ok = await serve(_constant(204))
    failing = await serve(_constant(500, {"message": "boom"}))
    refused = await serve(_constant(401))
    urls = [ok.url, failing.url, refused.url, f"http://127.0.0.1:{_free_port()}/ari"]
    for url in urls:
        client = AriClient(url, USER, PASSWORD, "callrec", timeout=0.5, backoff_initial=0.05)
        assert PASSWORD not in repr(client)
        try:
            await client.answer("c1")
        except AsteriskError as error:
            errors.append(error)
        events = client.events()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                async for _ in events:
                    pass
        await events.aclose()
        await client.close()
    assert len(errors) == 3
    for raised in errors:
        assert PASSWORD not in str(raised)
        assert PASSWORD not in repr(raised)
    assert caplog.records, "the client logged nothing to check"
    assert PASSWORD not in caplog.text
    assert base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in caplog.text


def test_bad_base_urls_are_config_errors() -> None:
    """Wrong schemes, embedded credentials and empty names are refused at construction."""
    with pytest.raises(ConfigError):
        AriClient("ftp://127.0.0.1/ari", USER, PASSWORD, "callrec")
    with pytest.raises(ConfigError) as caught:
        AriClient(f"http://u:{PASSWORD}@127.0.0.1/ari", USER, PASSWORD, "callrec")
    assert PASSWORD not in str(caught.value)
    with pytest.raises(ConfigError):
        AriClient("http://127.0.0.1/ari?x=1", USER, PASSWORD, "callrec")
    with pytest.raises(ConfigError):
        AriClient("http://127.0.0.1/ari", "a:b", PASSWORD, "callrec")
    with pytest.raises(ConfigError):
        AriClient("http://127.0.0.1/ari", USER, PASSWORD, "")


async def test_closed_client_refuses_requests(serve: Any) -> None:
    """After close(), a REST call raises AsteriskError instead of reopening a session."""
    fake = await serve(_constant(204))
    client = AriClient(fake.url, USER, PASSWORD, "callrec")
    await client.answer("c1")
    await client.close()
    with pytest.raises(AsteriskError):
        await client.answer("c1")
    assert len(fake.seen) == 1


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


async def test_https_verifies_the_certificate(serve: Any, tmp_path: Path) -> None:
    """An untrusted certificate is refused by default; trusting it through `ssl=` works."""
    cert, key = _self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    fake = await serve(_constant(200, {"system": {"version": "22"}}), server_context)
    async with AriClient(fake.url, USER, PASSWORD, "callrec") as client:
        with pytest.raises(AsteriskError) as caught:
            await client.ping()
    assert "certificate" in str(caught.value)
    assert fake.seen == []
    trusting = ssl.create_default_context(cafile=str(cert))
    async with AriClient(fake.url, USER, PASSWORD, "callrec", ssl=trusting) as client:
        assert await client.ping() == {"system": {"version": "22"}}
