"""The README's flow diagrams, printed from the transition tables they show.

`python -m callrec.diagrams` prints the README section; `--update README.md` rewrites it in
place, between its two markers; `--check README.md` exits 1 when the README no longer shows
the tables as they are (a test does the same, so a changed table cannot leave a stale
diagram behind).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from flows import callbacks, consent
from flows.errors import ConfigError

BEGIN = "<!-- diagrams: printed by `python -m callrec.diagrams --update README.md` -->"
END = "<!-- end of diagrams -->"

FLOWS: tuple[tuple[str, Callable[[], str]], ...] = (
    ("Inbound call (`flows/consent.py`)", consent.diagram),
    ("Callback (`flows/callbacks.py`)", callbacks.diagram),
)


def section() -> str:
    """The Markdown between the README's markers: each flow's title and Mermaid diagram."""
    return "\n".join(f"{title}:\n\n```mermaid\n{diagram()}```\n" for title, diagram in FLOWS)


def _bounds(text: str, where: str) -> tuple[int, int]:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ConfigError(f"{where}: no diagram section (the lines {BEGIN!r} ... {END!r})")
    return start + len(BEGIN), end


def shown_in(text: str, where: str = "README") -> str:
    """The diagram section as `text` (a README) shows it."""
    start, end = _bounds(text, where)
    return text[start:end].strip("\n") + "\n"


def updated(text: str, where: str = "README") -> str:
    """`text` with its diagram section printed afresh."""
    start, end = _bounds(text, where)
    return f"{text[:start]}\n\n{section()}\n{text[end:]}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m callrec.diagrams", description="print the flows' Mermaid diagrams"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--update", type=Path, metavar="README", help="rewrite its section")
    group.add_argument("--check", type=Path, metavar="README", help="exit 1 if it is stale")
    args = parser.parse_args(argv)
    path: Path | None = args.update or args.check
    if path is None:
        print(section(), end="")
        return 0
    try:
        text = path.read_text(encoding="utf-8")
        if args.check:
            if shown_in(text, str(path)) != section():
                print(f"{path}: the diagrams differ from the flows' tables", file=sys.stderr)
                return 1
            return 0
        path.write_text(updated(text, str(path)), encoding="utf-8")
    except OSError as error:
        print(f"{path}: {error.strerror}", file=sys.stderr)
        return 2
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
