"""`python -m bench [--full | --tiny] [--only NAME ...] [--dir DIR] [--keep]`

Runs the benchmarks one after the other (never side by side: each would skew the other's
figures), prints each one's table as soon as it is done, and at the end all rows as one
Markdown table for the README, with the machine they ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import callflows, ingest, lookup, pg_driver, scaleout, soak, sweep
from bench.figures import Result, markdown, render
from bench.machine import describe
from bench.progress import say
from bench.sizes import DEFAULT, FULL, TINY, Sizes
from flows.errors import CallrecError, ConfigError

Benchmark = Callable[[Sizes, Path], Awaitable[Result]]
BENCHMARKS: dict[str, Benchmark] = {
    "callflows": callflows.run,
    "lookup": lookup.run,
    "sweep": sweep.run,
    "ingest": ingest.run,
    "soak": soak.run,
    "drivers": pg_driver.run,
    "scaleout": scaleout.run,
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[2])
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument(
        "--full",
        dest="sizes",
        action="store_const",
        const=FULL,
        default=DEFAULT,
        help="the issue's sizes: 10 M calls in the ledger, 100,000 recordings swept (slow)",
    )
    scale.add_argument(
        "--tiny",
        dest="sizes",
        action="store_const",
        const=TINY,
        help="a few seconds each: checks that every benchmark runs, figures mean little",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        choices=sorted(BENCHMARKS),
        help=f"run only these ({', '.join(BENCHMARKS)})",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        help="work directory (default: a new one under $TMPDIR); it must be on the disk "
        "you want measured, not tmpfs",
    )
    parser.add_argument(
        "--ledger",
        choices=("sqlite", "postgresql"),
        action="append",
        help="lookup and sweep on this ledger only (repeat for both; default: both)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args(argv)


async def run_all(sizes: Sizes, names: list[str], work: Path) -> list[Result]:
    machine = describe(work)
    print(f"callrec benchmarks, {sizes.name} sizes")
    print(f"machine: {machine}\n", flush=True)
    results = []
    for name in names:
        say(f"{name}: starting")
        result = await BENCHMARKS[name](sizes, work)
        results.append(result)
        print(render(result) + "\n", flush=True)
    print("Summary (Markdown, for the README):\n")
    print(markdown(results, machine))
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    sizes: Sizes = args.sizes
    if args.ledger:
        sizes = dataclasses.replace(sizes, ledgers=tuple(args.ledger))
    names = [name for name in BENCHMARKS if args.only is None or name in args.only]
    if args.dir is not None:
        if args.dir.exists() and any(args.dir.iterdir()):
            raise ConfigError(f"--dir {args.dir}: not empty; name a new or empty directory")
        args.dir.mkdir(parents=True, exist_ok=True)
        work = args.dir
    else:
        work = Path(tempfile.mkdtemp(prefix="callrec-bench-"))
    try:
        asyncio.run(run_all(sizes, names, work))
    finally:
        if args.keep:
            say(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CallrecError as error:
        print(f"bench: {error}", file=sys.stderr)  # the messages name what failed
        sys.exit(1)
