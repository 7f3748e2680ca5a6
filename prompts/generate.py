"""Make the prompt audio from the texts, and the manifest that versions it.

    python -m prompts.generate                      synthesise every text with espeak-ng
    python -m prompts.generate --from-recordings D  convert studio recordings D/<id>.wav
    python -m prompts.generate --manifest-only      re-hash the audio already in sl/
    python -m prompts.generate --check              exit 1 unless manifest, texts and audio agree

Each prompt `texts/<id>.txt` becomes `sl/<id>.wav` (8 kHz 16-bit mono PCM), `sl/<id>.sln16`
(raw 16 kHz signed 16-bit little-endian), `sl/<id>.ulaw` and `sl/<id>.alaw` (raw 8 kHz
G.711): Asterisk plays whichever needs no transcoding for the channel's codec. Resampling is
soxr's (very high quality): a cheaper resampler folds energy above 4 kHz back into the
telephone band as audible aliasing. The manifest records each prompt's text, duration and
hashes; the WAV's hash is the prompt version stored with every decision.

Nothing is written until every input has been read and checked, and each file is replaced
atomically, so a failed run leaves the previous prompts as they were.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import soxr
from numpy.typing import NDArray

from flows.errors import CallrecError, ConfigError
from prompts.catalog import (
    FORMATS,
    LANGUAGE,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    audio_path,
    package_dir,
    parse_manifest,
)
from prompts.g711 import lin2alaw, lin2ulaw

Samples = NDArray[np.float64]

TELEPHONE_RATE = 8000  # .wav, .ulaw, .alaw: narrowband, what a PSTN call carries
WIDEBAND_RATE = 16000  # .sln16: played without resampling on wideband (G.722) channels
ESPEAK = "espeak-ng"
ESPEAK_VOICE = "sl"  # Debian's espeak-ng-data Slovenian voice
ESPEAK_WORDS_PER_MINUTE = 150  # slower than espeak's 175: a legal notice must be understood
PEAK_DBFS = -3.0  # synthesised speech normalised to this peak: loud, with room for overshoot
LEAD_IN_SECONDS = 0.2  # silence first: the first RTP packets after answer are often lost
RESAMPLE_QUALITY = "VHQ"
ESPEAK_TIMEOUT = 60.0  # seconds; a prompt takes well under one
# The synthesiser reads an abbreviation letter by letter; the caller hears the words. The
# text file (and so the manifest) keeps the written form, verbatim from the notice.
SPOKEN_FORMS = {"npr.": "na primer"}
FILE_MODE = 0o644  # Asterisk runs as its own user and must read the prompts
_DURATION_TOLERANCE = 0.05  # seconds two formats of one supplied prompt may differ by


@dataclass(frozen=True)
class Rendered:
    """One prompt's audio in every format, ready to be written."""

    prompt_id: str
    text: str
    telephone: NDArray[np.int16]  # 8 kHz
    wideband: NDArray[np.int16]  # 16 kHz
    source: dict[str, Any]


# --- texts ---------------------------------------------------------------------------


def read_texts(root: Path) -> dict[str, str]:
    """Every `texts/<id>.txt` under `root`: one line of UTF-8 each, by id."""
    texts_dir = root / "texts"
    paths = sorted(texts_dir.glob("*.txt"))
    if not paths:
        raise ConfigError(f"{texts_dir}: no prompt texts (<id>.txt)")
    texts: dict[str, str] = {}
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not UTF-8 ({error})") from error
        text = text.removesuffix("\n")
        if not text.strip() or "\n" in text or text != text.strip():
            raise ConfigError(f"{path}: a prompt text is one non-empty line, no outer spaces")
        texts[path.stem] = text
    return texts


def spoken_form(text: str) -> str:
    """The text as the synthesiser should read it (abbreviations written out)."""
    for written, spoken in SPOKEN_FORMS.items():
        text = re.sub(rf"(?<!\w){re.escape(written)}", spoken, text)
    return text


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- audio ---------------------------------------------------------------------------


def resample(samples: Samples, rate_in: int, rate_out: int) -> Samples:
    """`samples` (mono, float) at `rate_out`, with soxr's very high quality filter."""
    if rate_in == rate_out:
        return samples.copy()
    out = soxr.resample(samples, rate_in, rate_out, quality=RESAMPLE_QUALITY)
    return np.asarray(out, dtype=np.float64)


def to_int16(samples: Samples) -> NDArray[np.int16]:
    """Float samples in [-1, 1] as 16-bit PCM, rounded and clipped (never wrapped)."""
    scaled = np.clip(np.rint(samples * 32767.0), -32768, 32767)
    return scaled.astype(np.int16)


def read_mono(path: Path) -> tuple[Samples, int]:
    """The samples of any file libsndfile reads, mixed down to mono, and its rate."""
    try:
        data, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
        raise ConfigError(f"{path}: cannot read audio: {error}") from error
    samples = np.asarray(data, dtype=np.float64).mean(axis=1)
    if samples.size == 0:
        raise ConfigError(f"{path}: no audio in the file")
    return samples, int(rate)


def espeak_version() -> str:
    try:
        result = subprocess.run(
            [ESPEAK, "--version"], capture_output=True, text=True, check=True, timeout=10
        )
    except FileNotFoundError:
        raise ConfigError(
            f"{ESPEAK} is not installed (Debian: apt-get install espeak-ng); "
            "`--manifest-only` re-hashes existing audio without it"
        ) from None
    except subprocess.SubprocessError as error:
        raise ConfigError(f"{ESPEAK} --version failed: {error}") from error
    match = re.search(r"text-to-speech:\s*(\S+)", result.stdout)
    return match.group(1) if match else result.stdout.strip()


def synthesise(text: str, work_dir: Path) -> tuple[Samples, int]:
    """espeak-ng's Slovenian voice reading `text`, as float samples and their rate."""
    out = work_dir / "espeak.wav"
    try:
        subprocess.run(
            [ESPEAK, "-v", ESPEAK_VOICE, "-s", str(ESPEAK_WORDS_PER_MINUTE), "-b", "1",
             "-w", str(out), "--", spoken_form(text)],
            capture_output=True, check=True, timeout=ESPEAK_TIMEOUT,
        )  # fmt: skip
    except FileNotFoundError:
        raise ConfigError(
            f"{ESPEAK} is not installed (Debian: apt-get install espeak-ng)"
        ) from None
    except subprocess.CalledProcessError as error:
        detail = error.stderr.decode("utf-8", "replace").strip()
        raise ConfigError(f"{ESPEAK} failed ({error.returncode}): {detail}") from error
    except subprocess.TimeoutExpired as error:
        raise ConfigError(f"{ESPEAK} did not finish in {ESPEAK_TIMEOUT:.0f} s") from error
    return read_mono(out)


def render(
    prompt_id: str,
    text: str,
    samples: Samples,
    rate: int,
    *,
    normalise: bool,
    source: dict[str, Any],
) -> Rendered:
    """Both sample rates of one prompt from its source audio."""
    peak = float(np.max(np.abs(samples)))
    if peak == 0.0:
        raise ConfigError(f"prompt {prompt_id}: the audio is silent")
    if normalise:
        samples = samples * (10 ** (PEAK_DBFS / 20) / peak)
        lead_in = np.zeros(round(LEAD_IN_SECONDS * rate), dtype=np.float64)
        samples = np.concatenate([lead_in, samples])
    return Rendered(
        prompt_id=prompt_id,
        text=text,
        telephone=to_int16(resample(samples, rate, TELEPHONE_RATE)),
        wideband=to_int16(resample(samples, rate, WIDEBAND_RATE)),
        source=source,
    )


def encode(rendered: Rendered) -> dict[str, bytes]:
    """The bytes of each format's file."""
    return {
        "wav": wav_bytes(rendered.telephone, TELEPHONE_RATE),
        "sln16": rendered.wideband.astype("<i2").tobytes(),
        "ulaw": lin2ulaw(rendered.telephone).tobytes(),
        "alaw": lin2alaw(rendered.telephone).tobytes(),
    }


def wav_bytes(samples: NDArray[np.int16], rate: int) -> bytes:
    """A canonical 44-byte-header PCM WAV (no extra chunks, so the bytes, and the hash,
    depend on the samples only)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# --- reading what is already there -----------------------------------------------------


@dataclass(frozen=True)
class AudioFacts:
    """What the files of one prompt say about it."""

    duration_seconds: float
    hashes: dict[str, str]


def wav_facts(path: Path) -> tuple[int, int, int, int]:
    """(channels, sample width in bytes, rate, frames) from a WAV header."""
    try:
        with wave.open(str(path), "rb") as reader:
            return (
                reader.getnchannels(),
                reader.getsampwidth(),
                reader.getframerate(),
                reader.getnframes(),
            )
    except (wave.Error, EOFError) as error:
        raise ConfigError(f"{path}: not a PCM WAV file: {error}") from error


def inspect_audio(prompt_id: str, root: Path) -> AudioFacts:
    """Hashes and duration of a prompt's four files, after checking their formats agree."""
    paths = {fmt: audio_path(prompt_id, fmt, root) for fmt in FORMATS}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise ConfigError(f"prompt {prompt_id}: missing {', '.join(missing)}")
    channels, width, rate, frames = wav_facts(paths["wav"])
    if (channels, width, rate) != (1, 2, TELEPHONE_RATE):
        raise ConfigError(
            f"{paths['wav']}: {channels} channel(s), {8 * width}-bit, {rate} Hz; "
            f"Asterisk's wav format needs mono 16-bit {TELEPHONE_RATE} Hz"
        )
    if frames == 0:
        raise ConfigError(f"{paths['wav']}: no audio")
    duration = frames / TELEPHONE_RATE
    others = {
        "sln16": paths["sln16"].stat().st_size / (2 * WIDEBAND_RATE),
        "ulaw": paths["ulaw"].stat().st_size / TELEPHONE_RATE,
        "alaw": paths["alaw"].stat().st_size / TELEPHONE_RATE,
    }
    for fmt, seconds in others.items():
        if abs(seconds - duration) > _DURATION_TOLERANCE:
            raise ConfigError(
                f"{paths[fmt]}: {seconds:.3f} s of audio, but the wav has {duration:.3f} s; "
                "all formats of a prompt must be the same recording"
            )
    if paths["sln16"].stat().st_size % 2:
        raise ConfigError(f"{paths['sln16']}: odd size, not 16-bit samples")
    hashes = {fmt: sha256_hex(path.read_bytes()) for fmt, path in paths.items()}
    return AudioFacts(duration_seconds=duration, hashes=hashes)


def read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not valid JSON: {error}") from error
    parse_manifest(data, where=str(path))
    return data if isinstance(data, dict) else None


# --- the manifest ----------------------------------------------------------------------


def manifest_entry(text: str, facts: AudioFacts, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "text": text,
        "text_sha256": sha256_hex(text.encode("utf-8")),
        "duration_seconds": facts.duration_seconds,
        "sha256": facts.hashes["wav"],
        "files": facts.hashes,
        "source": source,
    }


def manifest_json(entries: dict[str, dict[str, Any]]) -> str:
    document = {"version": MANIFEST_VERSION, "language": LANGUAGE, "prompts": entries}
    return json.dumps(document, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, FILE_MODE)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_prompts(root: Path, texts: dict[str, str], rendered: Sequence[Rendered]) -> str:
    """Write every rendered prompt's files, then the manifest; the manifest's text."""
    entries: dict[str, dict[str, Any]] = {}
    for item in rendered:
        files = encode(item)
        for fmt, data in files.items():
            write_atomically(audio_path(item.prompt_id, fmt, root), data)
        facts = AudioFacts(
            duration_seconds=len(item.telephone) / TELEPHONE_RATE,
            hashes={fmt: sha256_hex(data) for fmt, data in files.items()},
        )
        entries[item.prompt_id] = manifest_entry(texts[item.prompt_id], facts, item.source)
    document = manifest_json(entries)
    write_atomically(root / MANIFEST_NAME, document.encode("utf-8"))
    return document


# --- the three ways to make the prompts -------------------------------------------------


def synthesise_all(root: Path) -> str:
    texts = read_texts(root)
    version = espeak_version()
    rendered: list[Rendered] = []
    with tempfile.TemporaryDirectory(prefix="callrec-prompts-") as work:
        for prompt_id, text in texts.items():
            samples, rate = synthesise(text, Path(work))
            source = {
                "kind": "espeak-ng",
                "version": version,
                "voice": ESPEAK_VOICE,
                "words_per_minute": ESPEAK_WORDS_PER_MINUTE,
                "spoken_text": spoken_form(text),
            }
            rendered.append(render(prompt_id, text, samples, rate, normalise=True, source=source))
    return write_prompts(root, texts, rendered)


RECORDING_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")


def convert_recordings(root: Path, recordings: Path) -> str:
    """Studio recordings `<recordings>/<id>.<wav|flac|...>` (any rate, mono or stereo) in
    every format; their level is kept as mastered."""
    texts = read_texts(root)
    found: dict[str, Path] = {}
    for prompt_id in texts:
        candidates = [recordings / f"{prompt_id}{suffix}" for suffix in RECORDING_SUFFIXES]
        existing = [path for path in candidates if path.is_file()]
        if len(existing) != 1:
            problem = "none" if not existing else "more than one"
            raise ConfigError(
                f"{recordings}: {problem} of {', '.join(p.name for p in candidates)}; "
                "every prompt needs exactly one recording"
            )
        found[prompt_id] = existing[0]
    rendered = []
    for prompt_id, path in found.items():
        samples, rate = read_mono(path)
        source = {"kind": "recording", "file": path.name, "sample_rate": rate}
        rendered.append(
            render(prompt_id, texts[prompt_id], samples, rate, normalise=False, source=source)
        )
    return write_prompts(root, texts, rendered)


def rehash(root: Path) -> str:
    """The manifest for the audio already under `sl/` (e.g. dropped-in recordings)."""
    texts = read_texts(root)
    previous = read_manifest(root)
    old: dict[str, Any] = previous["prompts"] if previous else {}
    entries: dict[str, dict[str, Any]] = {}
    for prompt_id, text in texts.items():
        facts = inspect_audio(prompt_id, root)
        before = old.get(prompt_id, {})
        # Same audio as before: where it came from is still known; otherwise it was supplied.
        source = (
            before["source"]
            if before.get("files") == facts.hashes and "source" in before
            else {"kind": "supplied"}
        )
        entries[prompt_id] = manifest_entry(text, facts, source)
    return manifest_json(entries)


def check(root: Path) -> list[str]:
    """Every way in which the manifest disagrees with the texts and the audio (empty: none)."""
    try:
        expected = json.loads(rehash(root))
        present = read_manifest(root)
    except CallrecError as error:
        return [str(error)]
    if present is None:
        return [f"{root / MANIFEST_NAME}: missing"]
    problems: list[str] = []
    want, have = expected["prompts"], present["prompts"]
    for prompt_id in sorted(set(want) | set(have)):
        if prompt_id not in have:
            problems.append(f"{prompt_id}: has a text but is not in the manifest")
        elif prompt_id not in want:
            problems.append(f"{prompt_id}: in the manifest but has no text")
        else:
            for key in ("text", "text_sha256", "duration_seconds", "sha256", "files"):
                if want[prompt_id][key] != have[prompt_id].get(key):
                    problems.append(f"{prompt_id}: {key} does not match the files")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prompts.generate", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=package_dir(),
        help="directory holding texts/, sl/ and manifest.json (default: this package)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--manifest-only",
        action="store_true",
        help="re-hash the audio already under sl/ without synthesising",
    )
    mode.add_argument(
        "--from-recordings",
        type=Path,
        metavar="DIR",
        help="convert DIR/<id>.wav (or .flac, ...) into every format",
    )
    mode.add_argument(
        "--check",
        action="store_true",
        help="exit 1 unless the manifest matches the texts and the audio",
    )
    args = parser.parse_args(argv)
    root: Path = args.root
    if args.check:
        problems = check(root)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    try:
        if args.manifest_only:
            document = rehash(root)
            write_atomically(root / MANIFEST_NAME, document.encode("utf-8"))
        elif args.from_recordings is not None:
            document = convert_recordings(root, args.from_recordings)
        else:
            document = synthesise_all(root)
    except CallrecError as error:
        print(f"prompts: {error}", file=sys.stderr)
        return 2
    for prompt_id, entry in json.loads(document)["prompts"].items():
        print(f"{prompt_id}: {entry['duration_seconds']:.2f} s  {entry['sha256'][:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
