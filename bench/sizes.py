"""How big each benchmark runs: `tiny` (the smoke test), `default` (`make bench`, a few
minutes on two cores) and `full` (`--full`: the issue's sizes)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sizes:
    name: str
    concurrent_calls: tuple[int, ...]  # call flows: calls alive at once, one run each
    call_time_scale: float  # call flows: script seconds to wall seconds (prompts, talk)
    ledger_calls: int  # callback lookup: calls in the ledger
    lookups: int  # callback lookup: look-ups timed (each also by the baseline)
    sweep_recordings: tuple[int, int]  # retention sweep: a small and a large run (memory)
    sweep_repeats: int  # retention sweep: runs of each size, each on new trees (the median counts)
    ingest_files: int  # ingest: 1-minute recordings per run
    # lookup and sweep: the ledgers they run on (PostgreSQL where a server answers)
    ledgers: tuple[str, ...] = ("sqlite", "postgresql")


TINY = Sizes(
    name="tiny",
    concurrent_calls=(10,),
    call_time_scale=0.1,
    ledger_calls=5_000,
    lookups=200,
    sweep_recordings=(200, 800),
    sweep_repeats=1,
    ingest_files=4,
)
DEFAULT = Sizes(
    name="default",
    concurrent_calls=(100, 1_000),
    call_time_scale=1.0,
    ledger_calls=1_000_000,
    lookups=5_000,
    sweep_recordings=(5_000, 20_000),
    sweep_repeats=3,
    ingest_files=200,
)
FULL = Sizes(
    name="full",
    concurrent_calls=(100, 1_000),
    call_time_scale=1.0,
    ledger_calls=10_000_000,
    lookups=10_000,
    sweep_recordings=(20_000, 100_000),
    sweep_repeats=3,
    ingest_files=1_000,
)
