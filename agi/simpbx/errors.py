"""The simulator's own errors: it stands for Asterisk, so it knows nothing of callrec's.

Callers that wire it to the controller (`callrec.harness`) translate these at the boundary.
"""

from __future__ import annotations


class SimulatorError(Exception):
    """Base of every error the simulated PBX raises on purpose."""


class SimulationSettingError(SimulatorError, ValueError):
    """A script, setting or dialplan the simulator cannot simulate; the message says which."""


class SimulatorStateError(SimulatorError, RuntimeError):
    """The simulator was used in the wrong state (not started, started twice)."""
