"""The pure metering core: readings in, per-function usage records out, and the durable signed ledger.

No I/O but the ledger; the clock comes in with each reading. Imports neither `drivers` nor `gateway`.
"""
