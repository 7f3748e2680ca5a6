"""The ledger and the retention-managed recording store (embedded default: SQLite + files)."""
