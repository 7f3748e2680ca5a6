"""What each DTMF key means to the consent question: one table for both adapters.

A phone signals sixteen DTMF keys (RFC 4733 events 0-15): 0-9, *, #, and A-D. POLICY.md §2
gives 1 and 2 their meaning (consent, refusal) and, as our default, "any other key: say the
choice again". This module sorts every key into one of four kinds:

* CONSENT (`1`) and REFUSAL (`2`);
* OTHER (the rest of 0-9, `*`, `#`): the caller answered, but not with 1 or 2; the choice
  is said again, up to `Policy.invalid_key_limit` times;
* IGNORED (`A`-`D`, and anything else an adapter may be handed: a lower-case letter, an
  empty or longer string): no answer at all. A playing question goes on (the key does not
  barge in), a wait for a key runs on to the end it was given (it is not restarted, so
  tones on the line cannot hold a caller in the question), and no count changes.

Why A-D are ignored rather than "another key". The notice asks the caller to press 1 or
2 on the phone's keypad; "another key" is another key of that keypad, pressed in answer.
A-D are on no telephone keypad a caller holds (only on radio and test equipment), so when
they arrive they come from the line or from equipment on it, not from the caller. Counting
them would let that noise cut the notice short by barge-in, so the caller does not hear
what they must be told, and, four times over, commit "no decision" for a caller who never
answered, taking away the choice the notice offers. Ignoring them takes nothing from fail
closed: without a 1 nothing is recorded anyway. Both adapters and the inbound flow ask
`classify`, so a key means the same over ARI and FastAGI.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

CONSENT_KEY = "1"
REFUSAL_KEY = "2"
DTMF_KEYS = "0123456789*#ABCD"  # every key DTMF can signal, in RFC 4733 event order


class Key(enum.Enum):
    CONSENT = "consent"
    REFUSAL = "refusal"
    OTHER = "other"  # an answer that is neither 1 nor 2: the choice is said again
    IGNORED = "ignored"  # no answer: nothing happens


def _kind(key: str) -> Key:
    if key == CONSENT_KEY:
        return Key.CONSENT
    if key == REFUSAL_KEY:
        return Key.REFUSAL
    if key in "ABCD":
        return Key.IGNORED
    return Key.OTHER


KEYS: Mapping[str, Key] = MappingProxyType({key: _kind(key) for key in DTMF_KEYS})

# What a question playing with barge-in lets through, in DTMF order (FastAGI's escape
# digits): every key that is an answer of some kind.
HEARD_KEYS = "".join(key for key in DTMF_KEYS if KEYS[key] is not Key.IGNORED)


def classify(key: str) -> Key:
    """The kind of `key` as a PBX reported it; a key outside DTMF is IGNORED."""
    return KEYS.get(key, Key.IGNORED)


def heard(key: str) -> bool:
    """Whether `key` is an answer the flow must see (anything but IGNORED)."""
    return classify(key) is not Key.IGNORED
