"""Copies the prompts into Asterisk's sounds directory, from wherever callrec is installed.

Asterisk plays `sound:<id>` with `lang=sl` from `<sounds>/sl/<id>.<format>`. `install(DIR)`
writes every format of every prompt there, with its text beside it (`<id>.txt`, for the
people who check what callers hear) and the manifest (`callrec-prompts.json`, whose
`sha256` per prompt is the version stored with each decision). Each file is written to a
temporary name, checked against the manifest's hash, and renamed into place, so Asterisk
never plays half a file and a copy that differs from the package's is never left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from flows.errors import ConfigError
from prompts.catalog import (
    FORMATS,
    LANGUAGE,
    MANIFEST_NAME,
    audio_path,
    package_dir,
    parse_manifest,
)

INSTALLED_MANIFEST = "callrec-prompts.json"
FILE_MODE = 0o644  # Asterisk runs as its own user and only reads them
DIR_MODE = 0o755


@dataclass(frozen=True, slots=True)
class Installed:
    path: Path
    changed: bool  # False: an identical file was there already


def install(sounds_dir: Path, source: Path | None = None) -> list[Installed]:
    """Write the prompts of `source` (default: this package) under `sounds_dir`/sl/.
    `sounds_dir` must exist: it is Asterisk's, and a typo should not make a new tree."""
    root = source or package_dir()
    if not sounds_dir.is_dir():
        raise ConfigError(f"{sounds_dir}: no such directory (Asterisk's sounds directory)")
    manifest_path = root / MANIFEST_NAME
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{manifest_path}: cannot read the prompt manifest: {error}") from None
    catalog = parse_manifest(data, where=str(manifest_path))
    target = sounds_dir / LANGUAGE
    try:
        target.mkdir(mode=DIR_MODE, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{target}: cannot create it: {error.strerror}") from None
    done: list[Installed] = []
    for prompt_id in sorted(catalog):
        hashes = data["prompts"][prompt_id]["files"]
        for fmt in FORMATS:
            content = _read(audio_path(prompt_id, fmt, root))
            if hashlib.sha256(content).hexdigest() != hashes[fmt]:
                raise ConfigError(
                    f"{audio_path(prompt_id, fmt, root)}: does not match its manifest "
                    "(run `python -m prompts.generate --check`)"
                )
            done.append(_write(target / f"{prompt_id}.{fmt}", content))
        text = _read(root / "texts" / f"{prompt_id}.txt")
        done.append(_write(target / f"{prompt_id}.txt", text))
    done.append(_write(target / INSTALLED_MANIFEST, _read(manifest_path)))
    return done


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it: {error.strerror}") from None


def _write(path: Path, content: bytes) -> Installed:
    with contextlib.suppress(OSError):
        if path.read_bytes() == content:
            path.chmod(FILE_MODE)
            return Installed(path, changed=False)
    partial = path.with_name(f".{path.name}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        partial.chmod(FILE_MODE)  # the umask never decides who can read a prompt
        partial.replace(path)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise ConfigError(f"{path}: cannot write it: {error.strerror}") from None
    return Installed(path, changed=True)
