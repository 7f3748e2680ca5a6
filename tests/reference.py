"""Where the tests find the reference material kept beside the project: Asterisk's ARI
declarations, the traces captured from a real Asterisk, and the operator's notice.

They live in `../shared/` next to the project root (or where CALLREC_SHARED points), not in
the repository. A checkout without them still tests everything else; the tests that compare
against them are skipped with a reason that says where they were looked for.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CALLREC_SHARED") or ROOT.parent / "shared")
ARI_SPEC = SHARED / "ari-spec"
ARI_TRACES = SHARED / "ari-traces"
SEED = SHARED / "seeds" / "000_96e1788f19e7bfa5.txt"


def absent(directory: Path) -> str:
    """The skip reason for reference files that are not there."""
    return f"no reference files in {directory} (set CALLREC_SHARED to the shared/ directory)"
