"""The blob store on the local file system: recordings under `recordings/YYYY/MM/DD/`.

A key is the file's path relative to the data directory (`recordings/2026/01/05/<id>.wav`),
which is also what the ledger's `recordings.path` has always held. The durable steps and
their order are `storage.files`'s: a file is placed whole (renamed after an fsync of its
data, or copied through a temporary file), every directory that gained or lost a name is
fsync'd before the call returns.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath

from storage import files
from storage.ports import Placed

RECORDINGS_DIR = "recordings"


class LocalBlobs:
    """`storage.ports.BlobStore` in a directory of `root` (the data directory)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / RECORDINGS_DIR

    def key_for(self, recording_id: str, created: datetime, suffix: str) -> str:
        return f"{RECORDINGS_DIR}/{created.strftime('%Y/%m/%d')}/{recording_id}{suffix}"

    def recording_id_of(self, key: str) -> str:
        return PurePosixPath(key).stem

    def path(self, key: str) -> Path:
        return self.root / key

    def location(self, key: str) -> str:
        # Text, not a `Path`: a sweep names hundreds of thousands of files, and pathlib
        # interns every name it parses in a table that never shrinks.
        return os.path.join(self.root, key)  # noqa: PTH118

    def _key(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    async def put(self, source: Path, key: str) -> Placed:
        final = self.path(key)
        await asyncio.to_thread(files.private_dir, final.parent)
        return await asyncio.to_thread(files.place, source, final)

    async def open(self, key: str) -> Path:
        return self.path(key)

    async def size(self, key: str) -> int | None:
        try:
            return (await asyncio.to_thread(os.stat, self.path(key))).st_size
        except OSError:
            return None

    async def hash(self, key: str) -> tuple[str, int]:
        return await asyncio.to_thread(files.hash_file, self.path(key))

    async def exists_many(self, keys: Sequence[str]) -> list[bool]:
        return await asyncio.to_thread(lambda: [self.path(key).exists() for key in keys])

    async def remove(self, key: str) -> bool:
        return await asyncio.to_thread(files.remove, self.path(key))

    async def remove_many(self, keys: Sequence[str]) -> list[bool | OSError]:
        return await asyncio.to_thread(self.remove_many_now, [self.location(k) for k in keys])

    @staticmethod
    def remove_many_now(paths: Sequence[str]) -> list[bool | OSError]:
        """Remove files (several at once), then fsync once each directory that lost one."""
        with files.Unlinker() as unlinker:
            outcomes = unlinker.unlink_many(paths)
            unlinker.sync()
        return outcomes

    def _partial(self, key: str) -> Path:
        final = self.path(key)
        return final.with_name(f".{final.name}{files.TEMP_SUFFIX}")

    def partial_key(self, key: str) -> str:
        return self._key(self._partial(key))

    async def discard_partial(self, key: str) -> list[str]:
        partial = self._partial(key)
        return [self._key(partial)] if await asyncio.to_thread(files.remove, partial) else []

    async def partials(self) -> list[str]:
        def walk() -> list[str]:
            found = sorted(self.dir.rglob(f".*{files.TEMP_SUFFIX}"))
            names = (p.with_name(p.name[1 : -len(files.TEMP_SUFFIX)]) for p in found)
            return [self._key(p) for p in names]

        return await asyncio.to_thread(walk)

    async def list(self) -> list[str]:
        def walk() -> list[str]:
            return [self._key(p) for p in sorted(self.dir.rglob("*")) if not p.is_dir()]

        return await asyncio.to_thread(walk)
