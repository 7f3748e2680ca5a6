"""The call-flow benchmark's floor: an ARI application that answers each call and continues it.

Same client (`agi.ari.AriClient`), same events socket, same loopback; no flow, no ledger, no
prompt, no recording. Whatever the controller costs beyond this is callrec's own.

    python -m bench.noop_app URL USER APP    (the password on stdin; runs until SIGTERM)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from agi.ari import AriClient
from agi.ari_events import AriEvent
from flows.errors import AsteriskError

log = logging.getLogger("bench.noop_app")


async def answer_and_continue(client: AriClient, channel_id: str) -> None:
    try:
        await client.answer(channel_id)
        await client.continue_in_dialplan(channel_id)
    except AsteriskError as error:
        log.warning("channel %s: %s", channel_id, error)


async def serve(client: AriClient, stop: asyncio.Event) -> None:
    tasks: set[asyncio.Task[None]] = set()

    async def events() -> None:
        async for item in client.events():
            if isinstance(item, AriEvent) and item.type == "StasisStart" and item.channel_id:
                task = asyncio.get_running_loop().create_task(
                    answer_and_continue(client, item.channel_id)
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    reader = asyncio.get_running_loop().create_task(events())
    await stop.wait()
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    await asyncio.gather(*tasks, return_exceptions=True)


async def main(url: str, user: str, password: str, app: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    client = AriClient(url, user, password, app)
    try:
        await serve(client, stop)
    finally:
        await client.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.stdin.readline().strip(), sys.argv[3]))
