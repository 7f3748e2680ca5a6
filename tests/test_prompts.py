"""The prompts: texts verbatim from the notice, audio in Asterisk's formats, and a manifest
that agrees with both."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from reference import SEED

from flows.errors import ConfigError
from flows.policy import DEFAULT_LINES
from prompts.catalog import FORMATS, PromptInfo, load_catalog, sounds_dir
from prompts.g711 import alaw2lin, lin2alaw, lin2ulaw, ulaw2lin
from prompts.generate import (
    TELEPHONE_RATE,
    resample,
    spoken_form,
    to_int16,
)

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "prompts"

# The texts as the operator's notice has them (POLICY.md sections 1 and 2), and the two short
# prompts of the consent flow. A copy here, so that a changed text file fails even without
# the seed file.
EXPECTED_TEXTS = {
    "callrec-sales-notice": (
        "Zaradi spremljanja dokazov o poslovni komunikaciji se vaš pogovor snema, posnetek "
        "bomo hranili 6 mesecev. Več informacij o obdelavi osebnih podatkov je na voljo na "
        "spletni strani A1."
    ),
    "callrec-consent-question": (
        "Zaradi spremljanja dokazov o poslovni komunikaciji kot je npr. naročilo storitev se "
        "vaš pogovor snema. Če je klic splošne narave, vas zaradi zagotavljanja visokega "
        "nivoja storitev prosimo za podajo soglasja za snemanje. Če s snemanjem soglašate "
        "pritisnite 1, sicer pritisnite 2. Posnetek bomo hranili 6 mesecev. Soglasje lahko "
        "prekličete s klicem v klicni center. Več informacij o obdelavi osebnih podatkov je "
        "na voljo na spletni strani A1."
    ),
    "callrec-consent-invalid": (
        "Pritisnili ste napačno tipko. Če s snemanjem soglašate pritisnite 1, sicer pritisnite 2."
    ),
    "callrec-consent-again": "Če s snemanjem soglašate pritisnite 1, sicer pritisnite 2.",
    # The complaints line's question (README "Adding a line"): it keeps recordings 12 months.
    "callrec-complaints-question": (
        "Za obravnavo vaše pritožbe in zagotavljanje visokega nivoja storitev vas prosimo za "
        "podajo soglasja za snemanje pogovora. Če s snemanjem soglašate pritisnite 1, sicer "
        "pritisnite 2. Posnetek bomo hranili 12 mesecev. Soglasje lahko prekličete s klicem v "
        "klicni center. Več informacij o obdelavi osebnih podatkov je na voljo na spletni "
        "strani A1."
    ),
}
FROM_THE_NOTICE = ("callrec-sales-notice", "callrec-consent-question")


def read_text(prompt_id: str, root: Path = PROMPTS) -> str:
    return (root / "texts" / f"{prompt_id}.txt").read_text(encoding="utf-8").removesuffix("\n")


def manifest(root: Path = PROMPTS) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    return data


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wav_header(path: Path) -> tuple[int, int, int, int, int]:
    """(format tag, channels, rate, bits, data bytes) read from the RIFF chunks by hand."""
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", f"{path.name}: not RIFF/WAVE"
    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8, f"{path.name}: RIFF size"
    offset, fmt, size = 12, None, None
    while offset + 8 <= len(data):
        chunk, length = struct.unpack_from("<4sI", data, offset)
        if chunk == b"fmt ":
            fmt = struct.unpack_from("<HHIIHH", data, offset + 8)
        elif chunk == b"data":
            size = length
            assert offset + 8 + length == len(data), f"{path.name}: data chunk size"
        offset += 8 + length + (length & 1)
    assert fmt is not None and size is not None, f"{path.name}: no fmt or data chunk"
    tag, channels, rate, byte_rate, align, bits = fmt
    assert byte_rate == rate * align and align == channels * bits // 8
    return tag, channels, rate, bits, size


def copy_prompts(target: Path) -> Path:
    """A writable copy of the prompts (texts, audio, manifest) under `target`."""
    shutil.copytree(PROMPTS / "texts", target / "texts")
    shutil.copytree(PROMPTS / "sl", target / "sl")
    shutil.copy(PROMPTS / "manifest.json", target / "manifest.json")
    return target


def run_generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prompts.generate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- the texts -------------------------------------------------------------------------


def test_texts_equal_the_embedded_copy() -> None:
    """Every prompt text file holds exactly the text this test holds."""
    found = {path.stem for path in (PROMPTS / "texts").glob("*.txt")}
    assert found == set(EXPECTED_TEXTS)
    for prompt_id, text in EXPECTED_TEXTS.items():
        assert read_text(prompt_id) == text, prompt_id


@pytest.mark.skipif(not SEED.is_file(), reason=f"the seed file {SEED} is not present")
def test_notice_texts_are_verbatim_from_the_seed() -> None:
    """The sales notice and the consent question appear character for character in the
    operator's notice (its line breaks read as single spaces)."""
    seed = re.sub(r"\s+", " ", SEED.read_text(encoding="utf-8"))
    for prompt_id in FROM_THE_NOTICE:
        assert read_text(prompt_id) in seed, prompt_id


def test_the_consent_prompts_repeat_the_notice_choice() -> None:
    """The retry prompts ask the very question of the notice: press 1 to agree, 2 not to."""
    choice = "Če s snemanjem soglašate pritisnite 1, sicer pritisnite 2."
    assert choice in read_text("callrec-consent-question")
    assert read_text("callrec-consent-invalid").endswith(choice)
    assert read_text("callrec-consent-again") == choice


def test_the_synthesiser_hears_abbreviations_written_out() -> None:
    """`npr.` is read as "na primer", only where it is a word of its own."""
    assert spoken_form("kot je npr. naročilo") == "kot je na primer naročilo"
    assert spoken_form("snpr. x") == "snpr. x"


# --- the manifest against the files ----------------------------------------------------


def test_manifest_lists_exactly_the_texts() -> None:
    """The manifest names every prompt that has a text, and nothing else."""
    assert set(manifest()["prompts"]) == set(EXPECTED_TEXTS)
    assert manifest()["language"] == "sl"


def test_manifest_texts_and_text_hashes_match_the_files() -> None:
    """Each entry's text is the text file's, and text_sha256 is its UTF-8 hash."""
    for prompt_id, entry in manifest()["prompts"].items():
        text = read_text(prompt_id)
        assert entry["text"] == text
        assert entry["text_sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_manifest_file_hashes_match_the_audio() -> None:
    """Each format's hash is the hash of that file, and `sha256` is the wav's."""
    for prompt_id, entry in manifest()["prompts"].items():
        assert set(entry["files"]) == set(FORMATS)
        for fmt in FORMATS:
            path = PROMPTS / "sl" / f"{prompt_id}.{fmt}"
            assert entry["files"][fmt] == sha256(path), path.name
        assert entry["sha256"] == entry["files"]["wav"]


def test_no_stray_audio_files() -> None:
    """`sl/` holds the four formats of each prompt and nothing else."""
    expected = {f"{pid}.{fmt}" for pid in EXPECTED_TEXTS for fmt in FORMATS}
    assert {path.name for path in (PROMPTS / "sl").iterdir()} == expected


def test_wav_files_are_telephone_pcm_of_the_stated_duration() -> None:
    """Every wav is 8 kHz mono 16-bit PCM (what Asterisk's format_wav reads), and its
    length is the manifest's duration."""
    for prompt_id, entry in manifest()["prompts"].items():
        tag, channels, rate, bits, size = wav_header(PROMPTS / "sl" / f"{prompt_id}.wav")
        assert (tag, channels, rate, bits) == (1, 1, 8000, 16), prompt_id
        assert size / 2 / 8000 == pytest.approx(entry["duration_seconds"], abs=1e-9)
        assert 1.0 < entry["duration_seconds"] < 60.0, prompt_id


def test_g711_files_encode_the_wav_samples() -> None:
    """The .ulaw and .alaw files are the wav's samples, G.711-coded, sample for sample."""
    for prompt_id in EXPECTED_TEXTS:
        samples, rate = soundfile.read(PROMPTS / "sl" / f"{prompt_id}.wav", dtype="int16")
        assert rate == 8000
        ulaw = np.frombuffer((PROMPTS / "sl" / f"{prompt_id}.ulaw").read_bytes(), np.uint8)
        alaw = np.frombuffer((PROMPTS / "sl" / f"{prompt_id}.alaw").read_bytes(), np.uint8)
        assert np.array_equal(ulaw, lin2ulaw(samples)), prompt_id
        assert np.array_equal(alaw, lin2alaw(samples)), prompt_id


def test_sln16_is_the_same_speech_at_16_khz() -> None:
    """The .sln16 file lasts as long as the wav and, brought to 8 kHz, sounds like it
    (the two differ by less than 1 % of their energy)."""
    for prompt_id, entry in manifest()["prompts"].items():
        raw = (PROMPTS / "sl" / f"{prompt_id}.sln16").read_bytes()
        wideband = np.frombuffer(raw, "<i2").astype(np.float64) / 32768
        assert len(wideband) / 16000 == pytest.approx(entry["duration_seconds"], abs=0.002)
        narrow, _ = soundfile.read(PROMPTS / "sl" / f"{prompt_id}.wav", dtype="float64")
        down = resample(wideband, 16000, 8000)
        n = min(len(down), len(narrow))
        error = np.sum((down[:n] - narrow[:n]) ** 2) / np.sum(narrow[:n] ** 2)
        assert error < 0.01, prompt_id


def test_audio_is_speech_not_silence() -> None:
    """Every prompt is loud enough to hear and never clips."""
    for prompt_id in EXPECTED_TEXTS:
        samples, _ = soundfile.read(PROMPTS / "sl" / f"{prompt_id}.wav", dtype="int16")
        peak = int(np.max(np.abs(samples.astype(np.int32))))
        assert 8000 < peak < 32767, prompt_id


def test_every_prompt_the_policy_names_exists_in_every_format() -> None:
    """Each prompt id of the default lines and of the README's complaints line has all four
    files, and no other prompt lies about."""
    named = {
        prompt
        for line in DEFAULT_LINES
        for prompt in (line.prompts.notice, line.prompts.invalid_key, line.prompts.ask_again)
        if prompt
    } | {"callrec-complaints-question"}
    assert named == set(EXPECTED_TEXTS)
    for prompt_id in named:
        for fmt in FORMATS:
            assert (sounds_dir() / "sl" / f"{prompt_id}.{fmt}").is_file()


# --- the catalog -----------------------------------------------------------------------


def test_catalog_describes_every_prompt() -> None:
    """load_catalog() gives each prompt's text, duration and wav hash from the manifest."""
    catalog = load_catalog()
    assert set(catalog) == set(EXPECTED_TEXTS)
    for prompt_id, info in catalog.items():
        assert isinstance(info, PromptInfo)
        assert info.id == prompt_id
        assert info.text == EXPECTED_TEXTS[prompt_id]
        assert info.sha256 == sha256(PROMPTS / "sl" / f"{prompt_id}.wav")
        assert info.duration_seconds == manifest()["prompts"][prompt_id]["duration_seconds"]


def test_catalog_without_a_manifest_says_how_to_make_one(tmp_path: Path) -> None:
    """A missing manifest is a ConfigError that names the generator."""
    with pytest.raises(ConfigError, match=r"prompts\.generate"):
        load_catalog(tmp_path)


@pytest.mark.parametrize(
    ("damage", "complaint"),
    [
        (lambda m: "{not json", "cannot read"),
        (lambda m: json.dumps({**m, "version": 99}), "version"),
        (lambda m: json.dumps({**m, "prompts": {}}), "non-empty"),
        (
            lambda m: json.dumps(
                {
                    **m,
                    "prompts": {
                        "callrec-consent-again": {
                            **m["prompts"]["callrec-consent-again"],
                            "sha256": "0" * 64,
                        }
                    },
                }
            ),
            "hash of the wav",
        ),
        (
            lambda m: json.dumps(
                {
                    **m,
                    "prompts": {
                        "../etc": m["prompts"]["callrec-consent-again"],
                    },
                }
            ),
            "lower-case",
        ),
    ],
)
def test_catalog_rejects_a_damaged_manifest(
    tmp_path: Path, damage: Callable[[dict[str, Any]], str], complaint: str
) -> None:
    """A manifest that is not what the generator writes is refused with the reason."""
    (tmp_path / "manifest.json").write_text(damage(manifest()), encoding="utf-8")
    with pytest.raises(ConfigError, match=complaint):
        load_catalog(tmp_path)


# --- G.711 and resampling --------------------------------------------------------------


def test_g711_silence_and_full_scale_codes() -> None:
    """Silence and both full scales get G.711's reference codes."""
    samples = np.array([0, 32767, -32768], dtype=np.int16)
    assert lin2ulaw(samples).tolist() == [0xFF, 0x80, 0x00]
    assert lin2alaw(samples).tolist() == [0xD5, 0xAA, 0x2A]


def test_g711_round_trip_error_is_within_a_quantisation_step() -> None:
    """Decoding what was encoded gives every 16-bit sample back within 1/16 of it (plus
    the smallest step)."""
    samples = np.arange(-32768, 32768, dtype=np.int16)
    for encode, decode in ((lin2ulaw, ulaw2lin), (lin2alaw, alaw2lin)):
        error = np.abs(decode(encode(samples)).astype(np.int32) - samples.astype(np.int32))
        assert np.all(error <= np.abs(samples.astype(np.int32)) / 16 + 16), encode.__name__


def test_g711_is_byte_identical_to_audioop() -> None:
    """For every 16-bit sample and every code, the coder agrees with the standard
    library's audioop (where the Python still has it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    samples = np.arange(-32768, 32768, dtype=np.int16)
    codes = np.arange(256, dtype=np.uint8)
    assert lin2ulaw(samples).tobytes() == audioop.lin2ulaw(samples.tobytes(), 2)
    assert lin2alaw(samples).tobytes() == audioop.lin2alaw(samples.tobytes(), 2)
    assert ulaw2lin(codes).tobytes() == audioop.ulaw2lin(codes.tobytes(), 2)
    assert alaw2lin(codes).tobytes() == audioop.alaw2lin(codes.tobytes(), 2)


def test_g711_refuses_anything_but_16_bit_samples() -> None:
    """Float or 32-bit input is a TypeError, not silently wrapped audio."""
    with pytest.raises(TypeError):
        lin2ulaw(np.zeros(4, dtype=np.float64))
    with pytest.raises(TypeError):
        lin2alaw(np.zeros(4, dtype=np.int32))


def test_resampling_keeps_energy_above_4_khz_out_of_the_telephone_band() -> None:
    """A 6 kHz tone at espeak-ng's 22 050 Hz leaves less than -90 dBFS after conversion to
    8 kHz 16-bit (a naive resampler folds it to 2 kHz at full level), while speech-band
    tones pass unchanged."""
    rate = 22050
    t = np.arange(2 * rate) / rate

    def level_db(frequency: float) -> float:
        tone = 0.5 * np.sin(2 * np.pi * frequency * t)
        out = to_int16(resample(tone, rate, TELEPHONE_RATE)).astype(np.float64) / 32767
        rms = np.sqrt(np.mean(out[800:-800] ** 2))
        return float(20 * np.log10(max(rms, 1e-12) / (0.5 / np.sqrt(2))))

    assert level_db(6000) < -90
    assert level_db(1000) == pytest.approx(0.0, abs=0.01)
    assert level_db(3400) == pytest.approx(0.0, abs=0.05)


# --- the generator ---------------------------------------------------------------------


def test_check_passes_on_the_committed_prompts() -> None:
    """`--check` finds the committed manifest, texts and audio in agreement."""
    result = run_generate("--check")
    assert result.returncode == 0, result.stderr


def test_check_reports_a_changed_audio_file(tmp_path: Path) -> None:
    """One byte changed in one file makes `--check` fail and name that prompt."""
    root = copy_prompts(tmp_path)
    path = root / "sl" / "callrec-consent-again.alaw"
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    result = run_generate("--root", str(root), "--check")
    assert result.returncode == 1
    assert "callrec-consent-again: files" in result.stderr


def test_check_reports_a_changed_text(tmp_path: Path) -> None:
    """A text edited without regenerating makes `--check` fail."""
    root = copy_prompts(tmp_path)
    (root / "texts" / "callrec-sales-notice.txt").write_text("Drugačno besedilo.\n", "utf-8")
    result = run_generate("--root", str(root), "--check")
    assert result.returncode == 1
    assert "callrec-sales-notice: text" in result.stderr


def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * 440 * t)
    return np.repeat(mono[:, None], channels, axis=1)


def test_manifest_only_rehashes_dropped_in_audio(tmp_path: Path) -> None:
    """Studio files dropped into sl/ under a prompt's names get their own hashes and
    duration, marked as supplied; the other prompts keep theirs and their origin."""
    root = copy_prompts(tmp_path)
    samples = to_int16(tone(2.5, 8000)[:, 0])
    soundfile.write(root / "sl" / "callrec-consent-again.wav", samples, 8000, subtype="PCM_16")
    wide = to_int16(tone(2.5, 16000)[:, 0])
    (root / "sl" / "callrec-consent-again.sln16").write_bytes(wide.astype("<i2").tobytes())
    (root / "sl" / "callrec-consent-again.ulaw").write_bytes(lin2ulaw(samples).tobytes())
    (root / "sl" / "callrec-consent-again.alaw").write_bytes(lin2alaw(samples).tobytes())
    before = manifest(root)

    result = run_generate("--root", str(root), "--manifest-only")

    assert result.returncode == 0, result.stderr
    after = manifest(root)
    entry = after["prompts"]["callrec-consent-again"]
    assert entry["sha256"] == sha256(root / "sl" / "callrec-consent-again.wav")
    assert entry["duration_seconds"] == 2.5
    assert entry["source"] == {"kind": "supplied"}
    for prompt_id in set(EXPECTED_TEXTS) - {"callrec-consent-again"}:
        assert after["prompts"][prompt_id] == before["prompts"][prompt_id]
    assert load_catalog(root)["callrec-consent-again"].duration_seconds == 2.5


def test_manifest_only_refuses_a_wav_asterisk_cannot_play(tmp_path: Path) -> None:
    """A 44.1 kHz stereo wav is refused with the reason, and the manifest is untouched."""
    root = copy_prompts(tmp_path)
    soundfile.write(root / "sl" / "callrec-sales-notice.wav", tone(1.0, 44100, 2), 44100)
    before = (root / "manifest.json").read_bytes()

    result = run_generate("--root", str(root), "--manifest-only")

    assert result.returncode == 2
    assert "mono 16-bit 8000 Hz" in result.stderr
    assert (root / "manifest.json").read_bytes() == before


def test_from_recordings_converts_studio_files(tmp_path: Path) -> None:
    """48 kHz stereo recordings become all four formats, mono, at their own level."""
    root = copy_prompts(tmp_path)
    studio = tmp_path / "studio"
    studio.mkdir()
    for index, prompt_id in enumerate(sorted(EXPECTED_TEXTS)):
        suffix = ".flac" if index % 2 else ".wav"
        soundfile.write(studio / f"{prompt_id}{suffix}", tone(1.0 + index, 48000, 2), 48000)

    result = run_generate("--root", str(root), "--from-recordings", str(studio))

    assert result.returncode == 0, result.stderr
    for index, prompt_id in enumerate(sorted(EXPECTED_TEXTS)):
        tag, channels, rate, bits, size = wav_header(root / "sl" / f"{prompt_id}.wav")
        assert (tag, channels, rate, bits) == (1, 1, 8000, 16)
        assert size / 2 / 8000 == pytest.approx(1.0 + index, abs=0.001)
        samples, _ = soundfile.read(root / "sl" / f"{prompt_id}.wav", dtype="float64")
        assert np.max(np.abs(samples)) == pytest.approx(0.3, abs=0.01)
        assert manifest(root)["prompts"][prompt_id]["source"]["kind"] == "recording"
    assert run_generate("--root", str(root), "--check").returncode == 0


def test_from_recordings_with_one_missing_writes_nothing(tmp_path: Path) -> None:
    """Without a recording for every prompt, no file changes and the error names them."""
    root = copy_prompts(tmp_path)
    studio = tmp_path / "studio"
    studio.mkdir()
    soundfile.write(studio / "callrec-sales-notice.wav", tone(1.0, 48000), 48000)
    before = {path.name: path.read_bytes() for path in (root / "sl").iterdir()}

    result = run_generate("--root", str(root), "--from-recordings", str(studio))

    assert result.returncode == 2
    assert "exactly one recording" in result.stderr
    assert {path.name: path.read_bytes() for path in (root / "sl").iterdir()} == before


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_synthesis_reproduces_the_committed_audio(tmp_path: Path) -> None:
    """Running the generator on the texts makes byte-identical audio and manifest (when the
    installed espeak-ng is the version the committed audio was made with)."""
    committed = manifest()
    versions = {entry["source"].get("version") for entry in committed["prompts"].values()}
    shutil.copytree(PROMPTS / "texts", tmp_path / "texts")

    result = run_generate("--root", str(tmp_path))

    assert result.returncode == 0, result.stderr
    made = manifest(tmp_path)
    made_versions = {entry["source"]["version"] for entry in made["prompts"].values()}
    if made_versions != versions:
        pytest.skip(f"espeak-ng {made_versions} here, the audio was made with {versions}")
    assert made == committed
    for path in (PROMPTS / "sl").iterdir():
        assert (tmp_path / "sl" / path.name).read_bytes() == path.read_bytes(), path.name
