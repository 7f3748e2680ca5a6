"""The benchmarks run end to end at tiny sizes and print their figures (not their speed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
NUMBER = r"[\d,]+(?:\.\d+)?"
RATIO = rf"(?:{NUMBER}x|n/a)"

# One line per benchmark figure that must be there, with a measured value, the baseline
# measured in the same run and their ratio where the benchmark has a baseline.
FIGURES = {
    "callflows": [
        rf"10 calls at once: setups/s +{NUMBER}/s +{NUMBER}/s +{RATIO} +>= 500/s +(met|MISSED)",
        rf"10 calls at {NUMBER}/s: StasisStart -> play p99 +{NUMBER} ms +{NUMBER} ms +{RATIO} "
        r"+< 5 ms +(met|MISSED)",
        rf"10 calls at {NUMBER}/s: digit -> decision committed p50 +{NUMBER} ms +{NUMBER} ms",
        r"10 calls: recorded as the callers chose +\d+/10 at once, \d+/10 paced",
        rf"10 calls: controller CPU per call +{NUMBER} ms +{NUMBER} ms +{RATIO}",
    ],
    "lookup": [
        rf"lookup p50 +{NUMBER} ms +{NUMBER} ms +{RATIO}",
        rf"lookup p99 +{NUMBER} ms +{NUMBER} ms +{RATIO} +< 1 ms +(met|MISSED)",
        rf"ledger on disk per 1 M calls +{NUMBER} (B|kB|MB|GB)",
        r"query plan: SEARCH c USING COVERING INDEX calls_missed",
    ],
    "sweep": [
        rf"sweep 200: wall time +{NUMBER} s +{NUMBER} s +{RATIO} +<= 1.5x find -delete",
        rf"sweep 800: wall time +{NUMBER} s +{NUMBER} s +{RATIO}",
        rf"sweep 800: vs find -delete; sync +{NUMBER} s +{NUMBER} s +{RATIO}",
        rf"sweep 800: peak RSS +{NUMBER} (kB|MB|GB)",
        r"peak RSS growth over the open store .* does not grow with N +(met|MISSED)",
    ],
    "ingest": [
        rf"ingest, spool on the store's file system \(rename\) +{NUMBER} rec/s "
        rf"+{NUMBER} rec/s +{RATIO}",
        rf"per recording p50 / p99 +{NUMBER} ms / {NUMBER} ms",
    ],
    # Measured when a PostgreSQL server answers (make pg), else a note says why not.
    "drivers": [
        rf"SQLite \(aiosqlite\): setups/s +{NUMBER} calls/s",
    ],
    "scaleout": [
        rf"SQLite, a ledger per node: setups/s, 20 calls at once +{NUMBER}/s",
        r"SQLite, a ledger per node: recordings stored / recorded +20/20",
    ],
}


def test_every_benchmark_prints_its_figures_and_baselines(tmp_path: Path) -> None:
    """`python -m bench --tiny` runs every benchmark and prints each figure with its
    baseline, the machine, and a Markdown row per figure, then removes its work directory."""
    work = tmp_path / "work"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--dir", str(work)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert re.search(r"^machine: .+, \d+ cores .*Python 3\.\d+.*SQLite", out, re.M), out[:500]
    for title in ("Call flows", "Callback lookup", "Retention sweep", "Ingest"):
        assert f"== {title}" in out, title
    for name, patterns in FIGURES.items():
        for pattern in patterns:
            assert re.search(pattern, out), f"{name}: no line matches {pattern!r}"
        assert re.search(rf"^\| {name} \| .+ \| .+ \|$", out, re.M), f"{name}: no Markdown row"
    assert not work.exists(), "the work directory was left behind"
