"""`callrec export verify DIR`: an auditor's check of an export, offline. It reads no
configuration and opens no ledger: the export's own files and, for the signature, the
store's published public key (`callrec audit public-key`) are all it needs."""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.errors import CallrecError
from storage import checkpoints
from storage.exportcheck import ExportCheck, check_export

EXIT_OK = 0
EXIT_FAILED = 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = sub.add_parser("export", help="check an export offline (no ledger, no config)")
    esub = export.add_subparsers(dest="action", required=True, metavar="ACTION")
    ev = esub.add_parser(
        "verify",
        help="check an export's files, SHA256SUMS, manifest and signature",
        description="Check an export folder with nothing but its files: SHA256SUMS, the "
        "manifest's SHA-256 of each recording and, given the store's public key, the "
        "signature. Exit 0 when all match, 1 with one line per problem.",
    )
    ev.add_argument("dir", type=Path, help="the export folder (callrec-export-...)")
    ev.add_argument(
        "--public-key", type=Path, help="the store's public key (`callrec audit public-key`)"
    )
    ev.add_argument("--json", action="store_true", help="machine-readable output")


def verify(args: argparse.Namespace) -> int:
    from callrec.cli import print_json

    folder: Path = args.dir
    if not folder.is_dir():
        raise CallrecError(f"export verify: {folder} is not a directory")
    public = None if args.public_key is None else checkpoints.load_public_key(args.public_key)
    try:
        result = check_export(folder, public)
    except OSError as error:
        raise CallrecError(f"export verify: {folder}: {error.strerror or error}") from None
    if args.json:
        print_json(
            {
                "dir": result.folder,
                "ok": result.ok,
                "problems": list(result.problems),
                "files": result.files,
                "recordings": result.recordings,
                "removed": list(result.removed),
                "signature": result.signature,
                "key": result.key,
            }
        )
    else:
        print(human(result))
    return EXIT_OK if result.ok else EXIT_FAILED


def human(result: ExportCheck) -> str:
    lines = [f"PROBLEM: {problem}" for problem in result.problems]
    lines += [f"note: {line}" for line in result.removed]
    signed = {
        "ok": f"signature ok (key {result.key})",
        "bad": "signature NOT ok",
        "missing": "no signature",
        "not checked": f"signature not checked: give --public-key (the manifest names key "
        f"{result.key})",
    }[result.signature]
    lines.append(
        f"{result.recordings} recording(s), {result.files} file(s) hashed; {signed}; "
        + ("all match" if result.ok else f"{len(result.problems)} problem(s)")
    )
    return "\n".join(lines)
