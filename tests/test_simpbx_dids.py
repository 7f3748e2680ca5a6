"""The simulated PBX's dialled-number table comes from the dialplan text, not the policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from agi.simpbx import SimulationSettingError
from agi.simpbx.dialplan import callrec_dialplan
from agi.simpbx.dids import DEFAULT_CONF_DIR, load_dids, parse_dids
from callrec.harness import simulated_dids
from flows.errors import ConfigError

DIALPLAN = """
[globals]
CALLREC_MODE=ari

[callrec-inbound]
; a comment: exten => 040111111,1,Set(CALLREC_QUEUE=commented)
exten => 040999999,1,Set(CALLREC_QUEUE=sales) ; a DID no policy line has
 same => n,Goto(callrec-${CALLREC_MODE}-inbound,${EXTEN},1)
exten=>+38640999998,1,Set(CALLREC_QUEUE=service)
exten => _X.,1,Set(CALLREC_QUEUE=patterns-are-not-dids)

[operator-context]
exten => 040222222,1,Set(CALLREC_QUEUE=not-ours)
"""


def _queue(plan_dids: dict[str, str], dialled: str) -> str:
    plan = callrec_dialplan(dids=plan_dids)
    priorities = plan.extension("callrec-inbound", dialled)
    assert priorities is not None
    return priorities[0].render({"EXTEN": dialled}).removeprefix("CALLREC_QUEUE=")


def test_dids_are_read_from_the_inbound_context_only() -> None:
    """Only callrec-inbound's `exten => <number>,1,Set(CALLREC_QUEUE=...)` lines count:
    comments, patterns and other contexts are not DIDs."""
    assert parse_dids(DIALPLAN) == {"040999999": "sales", "+38640999998": "service"}


def test_the_simulator_routes_by_the_dialplan_not_by_the_policy() -> None:
    """A number only the dialplan lists reaches the dialplan's queue, however it is written,
    and a number the dialplan lacks reaches the fallback queue even if the policy has it."""
    dids = parse_dids(DIALPLAN)
    assert _queue(dids, "040999999") == "sales"
    assert _queue(dids, "040 99 99 99") == "sales"
    assert _queue(dids, "00386 40 99 99 98") == "service"
    assert _queue({"040999999": "sales"}, "040 40 40 45") == "service"  # the fallback
    assert _queue({"040404045": "billing"}, "040 40 40 45") == "billing"


def test_a_directory_of_snippets_is_read_whole(tmp_path: Path) -> None:
    """Given a directory, every *.conf under it is read (snippets an operator includes)."""
    (tmp_path / "callrec").mkdir()
    (tmp_path / "callrec" / "inbound.conf").write_text(DIALPLAN, encoding="utf-8")
    (tmp_path / "more.conf").write_text(
        "[callrec-inbound]\nexten => 040777777,1,Set(CALLREC_QUEUE=service)\n", encoding="utf-8"
    )
    assert load_dids(tmp_path) == {
        "040999999": "sales",
        "+38640999998": "service",
        "040777777": "service",
    }


def test_a_dialplan_without_dids_is_refused(tmp_path: Path) -> None:
    """No DID at all is a clear error from the simulator, and a ConfigError (exit 2) from
    the runner that hands the table over, naming the path."""
    (tmp_path / "extensions.conf").write_text("[callrec-inbound]\n", encoding="utf-8")
    with pytest.raises(SimulationSettingError, match="no DID"):
        load_dids(tmp_path)
    with pytest.raises(ConfigError, match=str(tmp_path)):
        simulated_dids(tmp_path)


def test_the_shipped_dialplan_gives_every_line_both_forms() -> None:
    """The checkout's asterisk-conf/ routes the sales and service numbers, national and
    E.164, to their queues: the table the demo runs on."""
    if not DEFAULT_CONF_DIR.is_dir():
        pytest.skip(f"{DEFAULT_CONF_DIR} is not in this checkout")
    table = simulated_dids()
    assert table["040404045"] == table["+38640404045"] == "sales"
    assert table["040404040"] == table["+38640404040"] == "service"
