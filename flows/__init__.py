"""The recording policy as pure code: no I/O, no asyncio, no clock reads.

Every function and state machine here takes time as an argument. Adapters in `agi/`
translate Asterisk into the events of `flows.events` and carry out the commands of
`flows.commands`; `storage/` persists what the flows decide.
"""
