"""The dialled-number table of the simulated PBX, read from the dialplan Asterisk loads.

A real Asterisk picks a call's queue in `callrec-inbound` by the DID the trunk delivers:

    [callrec-inbound]
    exten => 040404045,1,Set(CALLREC_QUEUE=sales)

The simulator reads those entries from the same files (`parse_dids` takes the text,
`load_dids` a file or a directory of `*.conf` files), so it routes a number the way the
shipped dialplan does and not the way the controller's policy would: a number that is in
one but not the other shows up as a difference in a test, not as two copies that agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from agi.simpbx.errors import SimulationSettingError

INBOUND_CONTEXT = "callrec-inbound"
# The checkout's asterisk-conf/; an installed package has no checkout, so whoever runs the
# simulator there (callrec.harness) names the directory it ships.
DEFAULT_CONF_DIR = Path(__file__).resolve().parents[2] / "asterisk-conf"
_SECTION = re.compile(r"\[([^\]]+)\]")
_DID = re.compile(
    r"exten\s*=>?\s*(?P<did>\+?[0-9]+)\s*,\s*1\s*,\s*Set\(\s*CALLREC_QUEUE\s*=\s*"
    r"(?P<queue>[A-Za-z0-9_-]+)\s*\)\s*"
)
_SEPARATORS = str.maketrans("", "", " -./()\t")


def parse_dids(text: str, *, context: str = INBOUND_CONTEXT) -> dict[str, str]:
    """DID -> queue for every `exten => <number>,1,Set(CALLREC_QUEUE=<queue>)` line of
    `context` in dialplan `text` (other lines, patterns and comments are skipped)."""
    table: dict[str, str] = {}
    current = ""
    for raw in text.splitlines():
        line = raw.split(";", 1)[0].strip()
        section = _SECTION.match(line)
        if section is not None:
            current = section.group(1).strip()
            continue
        if current != context:
            continue
        did = _DID.fullmatch(line)
        if did is not None:
            table[did.group("did")] = did.group("queue")
    return table


def load_dids(path: Path = DEFAULT_CONF_DIR, *, context: str = INBOUND_CONTEXT) -> dict[str, str]:
    """The DID table of the dialplan at `path`: one file, or every `*.conf` file under a
    directory (Asterisk's `#include` snippets). A path without any DID is refused."""
    files: Iterable[Path] = sorted(path.rglob("*.conf")) if path.is_dir() else [path]
    table: dict[str, str] = {}
    for file in files:
        try:
            table.update(parse_dids(file.read_text(encoding="utf-8"), context=context))
        except (OSError, UnicodeDecodeError) as error:
            raise SimulationSettingError(f"{file}: cannot read the dialplan: {error}") from None
    if not table:
        raise SimulationSettingError(f"{path}: no DID in context [{context}] of the dialplan")
    return table


def canonical(dialled: str) -> str:
    """`dialled` as a trunk would deliver it: separators gone, an `00` prefix written `+`
    (scenario files write numbers as people do: `040 40 40 45`, `00386 40 40 40 85`)."""
    text = dialled.strip().translate(_SEPARATORS)
    return "+" + text[2:] if text.startswith("00") else text


def queue_of(dialled: str, dids: dict[str, str], fallback: str) -> str:
    """The queue `dialled` reaches: its DID's, or `fallback` for a number of no DID."""
    number = canonical(dialled)
    return dids.get(number, fallback)
