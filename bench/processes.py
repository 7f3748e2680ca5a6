"""Child processes of the benchmarks: the same interpreter, this project importable."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this environment) with the project first on PYTHONPATH, so that
    `python -m bench.…` works from any working directory."""
    env = dict(os.environ if base is None else base)
    paths = [str(PROJECT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env
