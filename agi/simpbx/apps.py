"""The simulated PBX's Queue() and Dial(): the scripted agent and the callback's customer.

`queue` is a queue with one scripted agent, as `ari-traces/queue-agent-answers.json` and
`queue-caller-gives-up-missed.json` saw a real one: empty `ANSWEREDTIME`/`DIALEDTIME`/
`QUEUEWAIT` on entry; when an agent answers, two `Dial` events, `QUEUEPOSITION`,
`QUEUEWAIT`, `BRIDGEPEER`, and after the talk `BRIDGEPEER` cleared and the times set; when the
caller gives up, `ANSWEREDTIME=0` and `ABANDONED=TRUE`. `dial` rings a callback's customer,
runs the `U()` Gosub on the answered leg (the notice, in Stasis) and bridges the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import TYPE_CHECKING

from agi.simpbx.calls import CallerScript
from agi.simpbx.dialplan import QueueSettings
from agi.simpbx.model import HANGUP, NEXT, NORMAL_CLEARING, RETURN, Channel, Outcome

if TYPE_CHECKING:
    from agi.simpbx.core import Switch


# -- Queue -----------------------------------------------------------------------


async def queue(switch: Switch, channel: Channel, data: str) -> Outcome:
    """Queue(name[,options[,URL[,announce[,timeout[,AGI[,gosub]]]]]]) with one scripted
    agent: it answers after `agent_answers_after` (or never); the caller gives up after
    `give_up_after`; a timeout given here ends the wait first. The queue's `QueueSettings`
    add the member variables and the member's Gosub, in app_queue's order: QUEUEPOSITION,
    MEMBERINTERFACE..., the Gosub, QUEUEWAIT, then the bridge (BRIDGEPEER)."""
    parts = data.split(",")
    name = parts[0]
    settings = switch.dialplan.queues.get(name, QueueSettings())
    timeout = float(parts[4]) if len(parts) > 4 and parts[4].strip() else None
    gosub = parts[6] if len(parts) > 6 and parts[6] else settings.membergosub
    for variable in ("ANSWEREDTIME", "ANSWEREDTIME_MS", "DIALEDTIME", "DIALEDTIME_MS"):
        switch.set_var(channel, variable, "")
    for variable in ("QUEUEWAIT", "QUEUEWAIT_MS"):
        switch.set_var(channel, variable, "")
    script = channel.script
    leave_after = script.give_up_after
    timed_out = timeout is not None and timeout < leave_after
    if timeout is not None and timed_out:
        leave_after = timeout
    answer = script.agent_answers_after
    if answer is None or answer > leave_after:
        return await _leave_queue(switch, channel, leave_after, timed_out=timed_out)
    member = switch.new_channel(
        tech=settings.member,
        caller_number=channel.caller_number,
        caller_name=channel.caller_name,
        script=CallerScript(),
        state="Down",
    )
    member.connected_name = member.connected_number = ""
    member.master = channel
    member.locate(name, settings.member_name, 1, "AppQueue", "(Outgoing Line)")
    switch.emit_dial(channel, member, "", settings.member)
    entered = switch.now
    if not await switch.sleep(channel, answer):
        switch.emit_dial(channel, member, "CANCEL", settings.member)
        switch.destroy(member, quietly=True)
        return await _leave_queue(switch, channel, switch.script_seconds_since(entered))
    member.state = "Up"
    member.connected_name, member.connected_number = channel.caller_name, channel.caller_number
    switch.emit_dial(channel, member, "ANSWER", settings.member)
    switch.set_var(channel, "QUEUEPOSITION", "1")
    if settings.setinterfacevar:
        for party in (channel, member):
            for variable, value in (
                ("MEMBERINTERFACE", settings.member),
                ("MEMBERNAME", settings.member_name),
                ("MEMBERCALLS", "0"),
                ("MEMBERLASTCALL", "0"),
                ("MEMBERPENALTY", "0"),
                ("MEMBERDYNAMIC", "0"),
                ("MEMBERREALTIME", "0"),
            ):
                switch.set_var(party, variable, value)
    if gosub:
        # Runs on the member's channel before the bridge; our dialplan's routine names the
        # agent on the caller's channel through MASTER_CHANNEL().
        await switch.run_priorities(member, gosub, "s", 1)
    _set_queue_wait(switch, channel, answer)
    switch.bridge(channel, member)
    started = switch.now
    talked_fully = await switch.sleep(channel, script.talk_seconds)
    talked = script.talk_seconds if talked_fully else switch.script_seconds_since(started)
    switch.unbridge(channel, talked=talked)
    switch.set_var(channel, "BRIDGEPEER", "")
    _set_times(switch, channel, "ANSWEREDTIME", talked)
    _set_times(switch, channel, "DIALEDTIME", switch.script_seconds_since(channel.created_at))
    switch.request_hangup(member, NORMAL_CLEARING, soft=False)
    switch.destroy(member, quietly=True)
    # Without Queue's `c` option the caller is hung up when the agent leaves.
    switch.request_hangup(channel, NORMAL_CLEARING, soft=True)
    return HANGUP


async def _leave_queue(
    switch: Switch, channel: Channel, after: float, *, timed_out: bool = False
) -> Outcome:
    entered = switch.now
    waited_fully = await switch.sleep(channel, after) if after > 0 else True
    waited = after if waited_fully else switch.script_seconds_since(entered)
    if waited_fully and not timed_out:
        switch.request_hangup(channel, NORMAL_CLEARING, soft=False)  # the caller gives up
    _set_queue_wait(switch, channel, waited)
    _set_times(switch, channel, "DIALEDTIME", switch.script_seconds_since(channel.created_at))
    _set_times(switch, channel, "ANSWEREDTIME", 0.0)
    if channel.hangup.is_set():
        switch.set_var(channel, "ABANDONED", "TRUE")
        switch.set_var(channel, "QUEUEPOSITION", "1")
        return HANGUP
    switch.set_var(channel, "QUEUESTATUS", "TIMEOUT")
    return NEXT


def _set_queue_wait(switch: Switch, channel: Channel, seconds: float) -> None:
    # app_queue counts the wait in whole seconds; its _MS twin is those seconds times 1000
    # (the missed-call trace: QUEUEWAIT=4, QUEUEWAIT_MS=4000 after 4.25 s).
    switch.set_var(channel, "QUEUEWAIT", str(int(seconds)))
    switch.set_var(channel, "QUEUEWAIT_MS", str(int(seconds) * 1000))


def _set_times(switch: Switch, channel: Channel, name: str, seconds: float) -> None:
    switch.set_var(channel, name, str(int(seconds)))
    switch.set_var(channel, f"{name}_MS", str(int(seconds * 1000)))


# -- Dial (callbacks) ------------------------------------------------------------


async def dial(switch: Switch, channel: Channel, data: str) -> Outcome:
    """Dial the callback's customer: rings, is answered after the customer script's
    `agent_answers_after` (or never; the agent gives up after its `give_up_after`), runs
    the `U()` Gosub on the customer's leg, and is bridged with the agent until the first of
    the two has talked its `talk_seconds`."""
    parts = data.split(",")
    dialstring = parts[0]
    timeout = float(parts[1]) if len(parts) > 1 and parts[1].strip() else float("inf")
    options = ",".join(parts[2:])
    number = dialstring.partition("/")[2].partition("@")[0]
    script = channel.dial_script or CallerScript(agent_answers_after=None)
    peer = switch.new_channel(
        tech="PJSIP/trunk",
        caller_number=channel.caller_number,
        caller_name=channel.caller_name,
        script=script,
        state="Down",
    )
    peer.connected_name, peer.connected_number = "", number
    peer.locate("callrec-callee", number, 1, "AppDial2", "(Outgoing Line)")
    channel.peer = peer
    switch.emit_dial(channel, peer, "", dialstring)
    give_up = channel.script.give_up_after
    answer = script.agent_answers_after
    if answer is None or answer > min(give_up, timeout):
        rang_fully = await switch.sleep(channel, min(give_up, timeout))
        if rang_fully and timeout <= give_up:
            status = "NOANSWER"
        else:
            if rang_fully:
                switch.request_hangup(channel, NORMAL_CLEARING, soft=False)  # agent gives up
            status = "CANCEL"
        switch.emit_dial(channel, peer, status, dialstring)
        switch.destroy(peer, quietly=True)
        switch.set_var(channel, "DIALSTATUS", status)
        return HANGUP if channel.hangup.is_set() else NEXT
    if not await switch.sleep(channel, answer):
        switch.emit_dial(channel, peer, "CANCEL", dialstring)
        switch.destroy(peer, quietly=True)
        switch.set_var(channel, "DIALSTATUS", "CANCEL")
        return HANGUP
    peer.state = "Up"
    switch.emit_dial(channel, peer, "ANSWER", dialstring)
    switch.start_dialplan(peer)
    gosub = re.search(r"U\(([^)]*)\)", options)
    if gosub is not None and not await _callee_gosub(switch, channel, peer, gosub.group(1)):
        await switch.end_dialplan(peer)  # its hangup handlers run, as in ast_hangup
        switch.set_var(channel, "DIALSTATUS", "ANSWER")
        return HANGUP if channel.hangup.is_set() else NEXT
    switch.bridge(channel, peer)
    started = switch.now
    # Each party hangs up after its own talk_seconds: the first one ends the conversation.
    agent_talk, customer_talk = channel.script.talk_seconds, peer.script.talk_seconds
    talk = min(agent_talk, customer_talk)
    talked_fully = await switch.sleep(channel, talk, peer.hangup)
    talked = talk if talked_fully else switch.script_seconds_since(started)
    switch.unbridge(channel, talked=talked)
    if talked_fully and agent_talk <= customer_talk:
        switch.request_hangup(channel, NORMAL_CLEARING, soft=False)
    elif talked_fully:
        switch.request_hangup(peer, NORMAL_CLEARING, soft=False)
    switch.request_hangup(peer, NORMAL_CLEARING, soft=True)  # left alone in the bridge
    await switch.end_dialplan(peer)  # its hangup handlers run, then it is destroyed
    switch.set_var(channel, "BRIDGEPEER", "")
    _set_times(switch, channel, "ANSWEREDTIME", talked)
    _set_times(switch, channel, "DIALEDTIME", switch.script_seconds_since(channel.created_at))
    switch.set_var(channel, "DIALSTATUS", "ANSWER")
    return HANGUP if channel.hangup.is_set() else NEXT


async def _callee_gosub(switch: Switch, channel: Channel, peer: Channel, spec: str) -> bool:
    """Run `U(context^arg1^...)` on the answered customer's leg, as Gosub(context,s,1(args));
    True when it returned with both legs still up."""
    context, *args = spec.split("^")
    for index, value in enumerate(args, start=1):
        peer.variables[f"ARG{index}"] = value
    peer.ran_gosub = True

    async def agent_gone() -> None:
        await channel.hangup.wait()
        switch.request_hangup(peer, NORMAL_CLEARING, soft=True)

    watcher = asyncio.get_running_loop().create_task(agent_gone())
    try:
        outcome = await switch.run_priorities(peer, context, "s", 1)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    return outcome == RETURN and not peer.hangup.is_set() and not channel.hangup.is_set()
