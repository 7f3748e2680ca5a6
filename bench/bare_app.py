"""The live load benchmark's floor: an ARI app doing the controller's REST work, nothing more.

Answer, play the consent question, and on 1 stop it, set the three recording variables (one
`ARRAY()` write, as the controller does) and `continue`: the same requests on the same client
(`agi.ari.AriClient`) as `callrec serve` makes for a caller who presses 1, with no flow, no
ledger, no subscription and no policy.

    python -m bench.bare_app URL USER APP SPOOL    (the password on stdin; until SIGTERM)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from agi.ari import AriClient
from agi.ari_events import AriEvent
from flows.errors import AsteriskError

log = logging.getLogger("bench.bare_app")

PROMPT = "sound:callrec-consent-question"  # the service line's question
LANGUAGE = "sl"


class BareApp:
    def __init__(self, client: AriClient, spool: Path) -> None:
        self._client = client
        self._spool = spool
        self._playing: dict[str, str] = {}  # channel id -> its playback id, while asking
        self._tasks: set[asyncio.Task[None]] = set()

    def handle(self, event: AriEvent) -> None:
        channel = event.channel_id
        if channel is None:
            return
        if event.type == "StasisStart":
            self._spawn(self._ask(channel))
        elif event.type == "ChannelDtmfReceived" and event.digit == "1":
            playback = self._playing.pop(channel, None)
            if playback is not None:
                self._spawn(self._record(channel, playback))
        elif event.type == "StasisEnd":
            self._playing.pop(channel, None)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ask(self, channel: str) -> None:
        playback = uuid.uuid4().hex
        self._playing[channel] = playback
        try:
            await self._client.answer(channel)
            await self._client.play(channel, PROMPT, lang=LANGUAGE, playback_id=playback)
        except AsteriskError as error:
            log.warning("channel %s: %s", channel, error)

    async def _record(self, channel: str, playback: str) -> None:
        call_id = uuid.uuid4().hex
        try:
            await self._client.stop_playback(playback)
            await self._client.set_variable(
                channel,
                "ARRAY(CALLREC_CALL_ID,CALLREC_FILE,CALLREC_RECORD)",
                f"{call_id},{self._spool}/{call_id}.wav,yes",
            )
            await self._client.continue_in_dialplan(channel)
        except AsteriskError as error:
            log.warning("channel %s: %s", channel, error)

    async def drain(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def main(url: str, user: str, password: str, app: str, spool: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    client = AriClient(url, user, password, app)
    bare = BareApp(client, spool)

    async def events() -> None:
        async for item in client.events():
            if isinstance(item, AriEvent):
                bare.handle(item)

    reader = loop.create_task(events())
    try:
        await stop.wait()
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await bare.drain()
        await client.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(
        main(sys.argv[1], sys.argv[2], sys.stdin.readline().strip(), sys.argv[3], Path(sys.argv[4]))
    )
