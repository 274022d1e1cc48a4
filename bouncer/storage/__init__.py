"""Persistent state in one SQLite file (SPEC §7): nothing that would lose a message lives only in memory."""
