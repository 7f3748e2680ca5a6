"""Lines as data end to end: a line added by configuration alone is routed, recorded and
kept as configured, on the simulated PBX through the controller `callrec serve` runs."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from readme_recipe import complaints_recipe, with_second_sales_number

from callrec.config import load_settings
from callrec.harness import harness
from callrec.runner import run_scenario
from callrec.scenarios import load_scenario
from flows.policy import Purpose
from flows.retention import delete_after
from storage.ports import RecordingStatus

ROOT = Path(__file__).resolve().parents[1]
SCALE = 0.02

SCENARIO = """
name: The complaints line and a second sales number, added by configuration
start: "2026-03-04T10:00:00+01:00"
steps:
  - call: {name: complaint, dialed: "040 40 40 50", caller: "041 555 901", keys: [[2.0, "1"]],
           agent_answers_after: 2, talk_seconds: 4}
    expect: {decision: record, recorded: true, outcome: answered,
             prompts: [callrec-complaints-question]}
  - call: {name: sale, dialed: "040 40 40 46", caller: "041 555 902",
           agent_answers_after: 2, talk_seconds: 4}
    expect: {decision: record, recorded: true, outcome: answered, prompts: [callrec-sales-notice]}
  - call: {name: missed, dialed: "040 40 40 50", caller: "041 555 903", keys: [[2.0, "1"]],
           agent_answers_after: null, give_up_after: 5}
    expect: {decision: record, recorded: false, outcome: missed}
  - advance: 20m
  - callback: {name: back, customer: "041 555 903", line: service, agent_talk_seconds: 4}
    expect: {decision: record, recorded: true, linked_to: missed, prompts: []}
"""


def recipe_settings(tmp_path: Path) -> Path:
    example = (ROOT / "callrec.example.toml").read_text(encoding="utf-8")
    config = tmp_path / "callrec.toml"
    config.write_text(with_second_sales_number(example) + complaints_recipe(), encoding="utf-8")
    return config


@pytest.mark.parametrize("mode", ["ari", "agi"])
async def test_a_complaints_line_and_a_sales_number_by_configuration_alone(
    tmp_path: Path, mode: str
) -> None:
    """With the README's recipe, a complaints call is recorded after 1 and kept 12 months
    for its purposes, the new sales number is recorded as sales, and a service agent's
    callback to a missed complaints call belongs to the complaints line."""
    settings = load_settings(recipe_settings(tmp_path), env={})
    policy = replace(settings.policy, overload_window=timedelta(hours=3))
    scenario_file = tmp_path / "recipe.yaml"
    scenario_file.write_text(SCENARIO, encoding="utf-8")
    async with harness(policy, tmp_path / "data", time_scale=SCALE, mode=mode) as h:
        reports = await run_scenario(h, load_scenario(scenario_file))
        checks = [c for r in reports for c in r.checks]
        failed = [f"{c.where}: {c.what}: {c.actual!r}" for c in checks if not c.ok]
        assert not failed, failed
        by_call = {r.call_id: r for r in await h.store.recordings(include_deleted=True)}
        complaint = by_call[h.calls["complaint"]]
        sale = by_call[h.calls["sale"]]
        back = by_call[h.calls["back"]]
        back_call = await h.store.get_call(h.calls["back"])
    assert complaint.line == "complaints" and complaint.status is RecordingStatus.STORED
    assert complaint.purposes == {Purpose.QUALITY, Purpose("complaints")}
    assert complaint.delete_after == delete_after(
        complaint.created_at, months=12, tz=policy.timezone
    )
    assert sale.line == "sales" and sale.legal_basis.value == "zekom2-214-7"
    assert sale.delete_after == delete_after(sale.created_at, months=6, tz=policy.timezone)
    # The callback: the missed call's line for every consequence, not the agent's endpoint's.
    assert back.line == "complaints"
    assert back.purposes == {Purpose.QUALITY, Purpose("complaints")}
    assert back.delete_after == delete_after(back.created_at, months=12, tz=policy.timezone)
    assert back_call is not None and back_call.line == "complaints"


async def test_a_callbacks_numbers_go_with_the_recording_it_belongs_to(tmp_path: Path) -> None:
    """The callback's call row keeps its numbers until its 12-month recording goes, and
    loses them in the same sweep: not on the 6-month date of the agent's line."""
    settings = load_settings(recipe_settings(tmp_path), env={})
    policy = replace(settings.policy, overload_window=timedelta(hours=3))
    scenario_file = tmp_path / "recipe.yaml"
    scenario_file.write_text(SCENARIO, encoding="utf-8")
    async with harness(policy, tmp_path / "data", time_scale=SCALE) as h:
        await run_scenario(h, load_scenario(scenario_file))
        back_id = h.calls["back"]
        (back,) = [r for r in await h.store.recordings() if r.call_id == back_id]
        await h.store.sweep(back.created_at + timedelta(days=200))
        after_six_months = await h.store.get_call(back_id)
        await h.store.sweep(back.delete_after - timedelta(seconds=1))
        before_due = await h.store.get_call(back_id)
        await h.store.sweep(back.delete_after)
        at_due = await h.store.get_call(back_id)
        (gone,) = [
            r for r in await h.store.recordings(include_deleted=True) if r.call_id == back_id
        ]
    assert after_six_months is not None and after_six_months.dialed == "+38641555903"
    assert before_due is not None and before_due.dialed == "+38641555903"
    assert gone.status is RecordingStatus.DELETED
    assert at_due is not None and at_due.dialed is None and at_due.caller is None
