"""The simulated PBX: Asterisk's ARI and FastAGI client side, on loopback, for tests and demos.

It stands where Asterisk stands, so it imports nothing of `flows/` (the policy it is meant
to test against): its errors are its own (`agi.simpbx.errors`) and its dialled-number table
is the dialplan's (`agi.simpbx.dids`). `tests/test_layering.py` keeps it that way.
"""

from agi.simpbx.calls import CallerScript, CallResult, SimCall
from agi.simpbx.errors import SimulationSettingError, SimulatorError, SimulatorStateError
from agi.simpbx.server import SimulatedPbx

__all__ = [
    "CallResult",
    "CallerScript",
    "SimCall",
    "SimulatedPbx",
    "SimulationSettingError",
    "SimulatorError",
    "SimulatorStateError",
]
