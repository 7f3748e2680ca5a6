"""The ARI client against Asterisk's own Swagger (`../shared/ari-spec/`): the ENDPOINTS
table, and every request the client really sends to a recording server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web
from reference import ARI_SPEC, absent

from agi.ari import ENDPOINTS, AriClient
from agi.ari_events import CHANNEL_REQUIRED, EVENT_TYPES

SPEC_DIR = ARI_SPEC
if not any(SPEC_DIR.glob("*.json")):
    pytest.skip(absent(SPEC_DIR), allow_module_level=True)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    params: dict[str, dict[str, Any]]  # name -> Swagger parameter (paramType, required, ...)


def _load_spec() -> tuple[list[Operation], dict[str, Any]]:
    files = sorted(SPEC_DIR.glob("*.json"))
    assert files, f"no Swagger files in {SPEC_DIR}"
    operations: list[Operation] = []
    models: dict[str, Any] = {}
    for path in files:
        document = json.loads(path.read_text(encoding="utf-8"))
        models.update(document.get("models", {}))
        for api in document.get("apis", []):
            for op in api.get("operations", []):
                params = {p["name"]: p for p in op.get("parameters", [])}
                operations.append(Operation(op["httpMethod"], api["path"], params))
    return operations, models


OPERATIONS, MODELS = _load_spec()


def _operation(method: str, path: str) -> Operation | None:
    return next((o for o in OPERATIONS if o.method == method and o.path == path), None)


def _non_path(op: Operation) -> set[str]:
    return {name for name, p in op.params.items() if p["paramType"] != "path"}


def test_every_endpoint_in_the_table_exists_in_the_spec() -> None:
    """Each (method, path, parameters) row of ENDPOINTS is an operation of the Swagger, with
    parameters it declares, and covers the operation's required parameters."""
    for method, path, params in ENDPOINTS:
        op = _operation(method, path)
        assert op is not None, f"{method} {path} is not in the ARI spec"
        assert params <= _non_path(op), f"{method} {path}: {sorted(params - _non_path(op))}"
        required = {
            n for n, p in op.params.items() if p.get("required") and p["paramType"] != "path"
        }
        assert required <= params, f"{method} {path} cannot send required {sorted(required)}"
        placeholders = {n for n, p in op.params.items() if p["paramType"] == "path"}
        assert all(f"{{{name}}}" in path for name in placeholders)


def test_event_types_are_the_specs() -> None:
    """EVENT_TYPES is exactly the set of message types the Swagger declares."""
    declared = set(MODELS["Message"]["subTypes"]) | set(MODELS["Event"]["subTypes"])
    assert declared - {"Event"} == EVENT_TYPES


def test_events_the_decoder_requires_a_channel_for_have_one_in_the_spec() -> None:
    """The decoder only insists on `channel` where the Swagger marks it required."""
    for kind in CHANNEL_REQUIRED:
        assert MODELS[kind]["properties"]["channel"].get("required") is True, kind


@dataclass(frozen=True)
class Sent:
    method: str
    segments: tuple[str, ...]  # raw (still encoded) path segments after /ari
    query: dict[str, str]
    body: Any


def _match(method: str, segments: tuple[str, ...]) -> Operation | None:
    """The spec operation a request addresses; literal segments beat placeholders."""
    best: tuple[int, Operation] | None = None
    for op in OPERATIONS:
        parts = op.path.strip("/").split("/")
        if op.method != method or len(parts) != len(segments):
            continue
        literal = 0
        for part, segment in zip(parts, segments, strict=True):
            if part.startswith("{"):
                if not segment:
                    break
            elif part != unquote(segment):
                break
            else:
                literal += 1
        else:
            if best is None or literal > best[0]:
                best = (literal, op)
    return None if best is None else best[1]


def _valid(value: str, swagger: dict[str, Any]) -> bool:
    allowed = (swagger.get("allowableValues") or {}).get("values")
    if allowed is not None and value not in allowed:
        return False
    match swagger.get("dataType"):
        case "int" | "long":
            return value.lstrip("-").isdigit()
        case "boolean":
            return value in ("true", "false")
        case _:
            return True


async def _answer(request: web.Request) -> web.StreamResponse:
    segments = request.raw_path.split("?")[0].split("/")[2:]
    if segments == ["events"]:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "ApplicationRegistered", "application": "x"}))
        async for _ in ws:
            pass
        return ws
    match request.method, segments:
        case "POST", [_, _, "play", *rest]:
            return web.json_response({"id": unquote(rest[0]) if rest else "pb-1"}, status=201)
        case "GET", [_, _, "variable"] | ["asterisk", "variable"]:
            return web.json_response({"value": "v"})
        case "GET", ["applications", _]:
            return web.json_response({"name": "callrec", "channel_ids": []})
        case "GET", ["channels"]:
            return web.json_response([])
        case "POST", ["channels"]:
            return web.json_response({"id": "1795597767.8"})
        case "GET", ["asterisk", "info"]:
            return web.json_response({"system": {"version": "22.0.0"}})
        case "POST", ["applications", _, "subscription"]:
            return web.json_response({"name": "callrec", "channel_ids": []})
    return web.Response(status=204)


@pytest.fixture
async def recording_server() -> AsyncIterator[tuple[str, list[Sent]]]:
    sent: list[Sent] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        sent.append(
            Sent(
                request.method,
                tuple(request.raw_path.split("?")[0].split("/")[2:]),
                dict(request.query),
                json.loads(body) if body else None,
            )
        )
        response: web.StreamResponse = await handler(request)
        return response

    app = web.Application(middlewares=[record])
    app.router.add_route("*", "/ari/{tail:.*}", _answer)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/ari", sent
    await runner.cleanup()


async def test_every_request_the_client_sends_is_in_the_spec(
    recording_server: tuple[str, list[Sent]],
) -> None:
    """Every public REST method (with every option set) and the events WebSocket send only
    paths, methods, parameters and values the Swagger declares, through table rows, and
    every table row is used."""
    url, sent = recording_server
    async with AriClient(url, "callrec", "pw", "callrec") as client:
        await client.answer("1795597767.8")
        await client.play("1795597767.8", "sound:sl/consent", lang="sl")
        await client.play("1795597767.8", "sound:sl/consent", lang="sl", playback_id="pb/2")
        await client.stop_playback("pb/2")
        await client.subscribe("1795597767.8")
        await client.unsubscribe("1795597767.8")
        await client.set_variable("1795597767.8", "CALLREC_RECORD", "yes")
        await client.filter_events(["StasisStart", "StasisEnd"])
        await client.get_variable("1795597767.8", "BRIDGEPEER")
        await client.continue_in_dialplan(
            "1795597767.8", context="after-consent", extension="s", priority=1
        )
        await client.continue_in_dialplan("1795597767.8")
        await client.hangup("1795597767.8")
        await client.hangup("1795597767.8", reason="busy")
        await client.list_channels()
        await client.originate(
            "Local/bargein1@caller-sim",
            extension="040404040",
            context="inbound",
            priority=1,
            caller_id="Ana <041123456>",
            app="callrec",
            app_args="callback,+38641123456",
            variables={"CALLREC_CALL_ID": "c-1"},
            timeout=30,
        )
        await client.ping()
        assert await client.get_global("CALLREC_TRUNK") == "v"
        await client.set_global("CALLREC_TRUNK", "callrec-test-customer/n")
        assert await client.application_registered()
        events = client.events()
        async with asyncio.timeout(5):
            first = await anext(events)
        await events.aclose()
    assert getattr(first, "type", None) == "ApplicationRegistered"

    table = {(method, path): params for method, path, params in ENDPOINTS}
    used: set[tuple[str, str]] = set()
    for request in sent:
        op = _match(request.method, request.segments)
        where = f"{request.method} /{'/'.join(request.segments)}"
        assert op is not None, f"{where} is not an ARI operation"
        key = (op.method, op.path)
        assert key in table, f"{where} ({op.path}) is sent outside the ENDPOINTS table"
        used.add(key)
        query_params = {n for n, p in op.params.items() if p["paramType"] == "query"}
        body_params = {n for n, p in op.params.items() if p["paramType"] == "body"}
        # A body parameter is the whole body (res_ari's generated code: `args.x = body`).
        if request.body is not None:
            assert len(body_params) == 1, f"{where} sends a body the operation does not take"
        names = set(request.query) | (body_params if request.body is not None else set())
        assert names <= table[key], f"{where} sends {sorted(names - table[key])}"
        assert set(request.query) <= query_params, where
        for name, p in op.params.items():
            if p.get("required") and p["paramType"] == "query":
                assert name in request.query, f"{where} lacks required {name}"
        for name, value in request.query.items():
            assert _valid(value, op.params[name]), f"{where}: {name}={value!r}"
    assert used == set(table), f"rows never used: {sorted(set(table) - used)}"
