"""One exception tree for the whole project.

    CallrecError                   base of every error callrec raises on purpose
    ├── ConfigError                a configuration file or value is wrong (names key and reason)
    ├── NumberError                a phone number cannot be normalised to E.164
    ├── FlowError                  a flow got an event its transition table has no entry for
    ├── StorageError               the ledger or the recording store failed
    │   ├── StoreFullError         no space left (the source file stays where it was)
    │   ├── StoreReadOnlyError     the store cannot be written
    │   ├── IntegrityError         a hash, a file or the audit chain does not match
    │   ├── ControllerConflict     another controller took this controller's id meanwhile
    │   └── NotFoundError          no such call, recording or withdrawal
    ├── AccessRefused              a purpose does not fit a recording's legal basis, or it is gone
    ├── AsteriskError              ARI or AGI failed (HTTP status / AGI code, with the call id)
    │   ├── ChannelGone            the channel no longer exists (404 after a hang-up)
    │   ├── ConnectionLost         the link to the channel is unusable (a broken AGI socket)
    │   └── ProtocolViolation      a malformed message from Asterisk (bad JSON, bad AGI line)
    └── EventsError                MQTT publishing could not be set up

A hang-up is an event (`flows.events.CallerHungUp`), never an error: adapters map
`ChannelGone` to that event at the boundary. Errors about one call carry its `call_id`.
"""

from __future__ import annotations


class CallrecError(Exception):
    """Base of every error callrec raises on purpose."""

    def __init__(self, message: str, *, call_id: str | None = None) -> None:
        super().__init__(message)
        self.call_id = call_id

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} (call {self.call_id})" if self.call_id else text


class ConfigError(CallrecError):
    """A configuration file or value is wrong; the message names the key and the reason."""


class NumberError(CallrecError, ValueError):
    """A phone number cannot be normalised to E.164."""


class FlowError(CallrecError):
    """A flow received an event that its transition table does not allow in its state."""


class StorageError(CallrecError):
    """The ledger or the recording store failed."""


class StoreFullError(StorageError):
    """No space left on the store's device; nothing was moved or lost."""


class StoreReadOnlyError(StorageError):
    """The store's directory or database cannot be written."""


class IntegrityError(StorageError):
    """A recording's hash, its file, or the audit chain does not match the ledger."""


class ControllerConflict(StorageError):
    """This controller's id was taken by another controller while its lock was lost: two
    controllers with one id would settle each other's calls, so this one must stop."""


class NotFoundError(StorageError):
    """No such call, recording or withdrawal."""


class AccessRefused(CallrecError):
    """An access named a purpose that the recording's legal basis does not allow, or the
    recording has been deleted."""


class AsteriskError(CallrecError):
    """ARI or AGI answered with an error, timed out, or could not be reached."""

    def __init__(
        self, message: str, *, call_id: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message, call_id=call_id)
        self.status = status


class ChannelGone(AsteriskError):
    """The channel no longer exists (Asterisk answers 404 "Channel not found")."""


class ConnectionLost(AsteriskError):
    """Nothing more can be sent to this channel: its AGI connection timed out, carried
    garbage, or is being shut down. Retrying is pointless; the dialplan goes on without us."""


class ProtocolViolation(AsteriskError):
    """Asterisk (or something pretending to be it) sent a malformed message."""


class EventsError(CallrecError):
    """MQTT publishing could not be set up (bad URL, bad credentials file)."""
