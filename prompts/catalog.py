"""The prompt catalog: what `prompts/manifest.json` says about each prompt.

The manifest is written by `python -m prompts.generate`; this module only reads it, with
the standard library, so the controller needs neither numpy nor the audio tools at run
time. `PromptInfo.sha256` (the hash of the prompt's 8 kHz WAV file) is the prompt version
stored with every decision: it proves which audio the caller heard.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.errors import ConfigError

LANGUAGE = "sl"  # Asterisk looks for `sound:<id>` with lang=sl in `<sounds>/sl/<id>.<format>`
FORMATS = ("wav", "sln16", "ulaw", "alaw")  # the file extensions Asterisk picks a codec by
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PROMPT_ID = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")  # also a file name: nothing else
# How a notice states its retention: "posnetek bomo hranili 6 mesecev" (1 mesec, 2 meseca,
# 3 mesece, 5 mesecev: every form starts "mesec").
_RETENTION = re.compile(r"\bhranili\s+(\d{1,3})\s+mesec", re.IGNORECASE)


@dataclass(frozen=True)
class PromptInfo:
    id: str
    text: str  # exactly what the caller hears, as written in `texts/<id>.txt`
    duration_seconds: float
    sha256: str  # of `sl/<id>.wav`: the prompt version

    @property
    def retention_months(self) -> int | None:
        """The months the text promises to keep the recording (None: it says nothing of
        it): what `flows.config.check_notices` holds each line's retention to."""
        return promised_months(self.text)


def promised_months(text: str) -> int | None:
    """The retention a prompt's text states, in months; None when it states none. Two
    different periods in one text are a catalog error: the caller could not tell which."""
    found = {int(match.group(1)) for match in _RETENTION.finditer(text)}
    if len(found) > 1:
        raise ConfigError(f"a prompt promises {sorted(found)} months at once")
    return next(iter(found), None)


def promises(catalog: dict[str, PromptInfo]) -> dict[str, int | None]:
    """Prompt id -> the months it promises (`flows.config.check_notices`' input)."""
    return {pid: info.retention_months for pid, info in catalog.items()}


def package_dir() -> Path:
    """The directory of this package: it holds `texts/`, `sl/` and the manifest."""
    return Path(__file__).parent


def sounds_dir() -> Path:
    """The directory to give Asterisk as (or link into) its sounds directory: it holds
    `sl/<id>.<format>` for every prompt."""
    return package_dir()


def audio_path(prompt_id: str, fmt: str, root: Path | None = None) -> Path:
    """Where the `fmt` file of a prompt lives under `root` (default: this package)."""
    if fmt not in FORMATS:
        raise ConfigError(f"prompt format {fmt!r}: not one of {', '.join(FORMATS)}")
    return (root or package_dir()) / LANGUAGE / f"{prompt_id}.{fmt}"


def load_catalog(root: Path | None = None) -> dict[str, PromptInfo]:
    """Every prompt of the manifest under `root` (default: this package), by id."""
    path = (root or package_dir()) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no prompt manifest (run `python -m prompts.generate`)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the prompt manifest: {error}") from error
    return parse_manifest(data, where=str(path))


def parse_manifest(data: object, *, where: str) -> dict[str, PromptInfo]:
    """The catalog a parsed manifest describes; a clear `ConfigError` for anything else."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the manifest is not a JSON object")
    if data.get("version") != MANIFEST_VERSION:
        raise ConfigError(
            f"{where}: manifest version {data.get('version')!r}, expected {MANIFEST_VERSION}"
        )
    prompts = data.get("prompts")
    if not isinstance(prompts, dict) or not prompts:
        raise ConfigError(f"{where}: 'prompts' must be a non-empty object")
    catalog: dict[str, PromptInfo] = {}
    for prompt_id, entry in prompts.items():
        catalog[prompt_id] = _prompt(prompt_id, entry, f"{where}: prompts.{prompt_id}")
    return catalog


def _prompt(prompt_id: str, entry: Any, where: str) -> PromptInfo:
    if not _PROMPT_ID.fullmatch(prompt_id):
        raise ConfigError(f"{where}: a prompt id is lower-case letters, digits and dashes")
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: not an object")
    text = entry.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}.text: missing or empty")
    duration = entry.get("duration_seconds")
    if isinstance(duration, bool) or not isinstance(duration, int | float) or duration <= 0:
        raise ConfigError(f"{where}.duration_seconds: must be a positive number")
    sha256 = entry.get("sha256")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ConfigError(f"{where}.sha256: must be 64 lower-case hex digits")
    files = entry.get("files")
    if not isinstance(files, dict) or set(files) != set(FORMATS):
        raise ConfigError(f"{where}.files: must name exactly {', '.join(FORMATS)}")
    if files["wav"] != sha256:
        raise ConfigError(f"{where}: sha256 is the hash of the wav file, and they differ")
    try:
        promised_months(text)
    except ConfigError as error:
        raise ConfigError(f"{where}.text: {error}") from None
    return PromptInfo(id=prompt_id, text=text, duration_seconds=float(duration), sha256=sha256)
