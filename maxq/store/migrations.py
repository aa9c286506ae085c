"""
Schema migrations: C{sql/<backend>/NNN_name.sql} applied in order, each in
one transaction, with the version recorded in C{schema_version}.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_MIGRATION_RE = re.compile(r"^(\d+)_[A-Za-z0-9_]+\.sql$")


def sql_dir(backend: str) -> Path:
    """
    The migrations of C{backend}: the source tree's C{sql/} when running
    from a checkout or an editable install, else the copy a regular install
    puts under C{<prefix>/share/maxq/sql}.
    """
    candidates = [
        Path(__file__).resolve().parents[2] / "sql" / backend,
        Path(sys.prefix) / "share" / "maxq" / "sql" / backend,
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no migrations for {backend} in {candidates}")


def migrations(backend: str) -> list[tuple[int, Path]]:
    found = []
    for path in sql_dir(backend).iterdir():
        match = _MIGRATION_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    found.sort()
    versions = [v for v, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers in {sql_dir(backend)}")
    return found


def pending_migrations(backend: str, current: int) -> list[tuple[int, str]]:
    """
    C{backend}'s migrations past version C{current}, in order, as
    C{(version, script)}: what both backends apply, each script and the
    record of its version in one transaction of their own.
    """
    return [(version, path.read_text()) for version, path in migrations(backend)
            if version > current]


def migrate_sqlite(conn) -> int:
    """
    Bring the SQLite database on C{conn} up to date; returns its version.
    Blocking: called once at start, before the server listens.
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version "
        "(version INTEGER NOT NULL, applied_at TEXT NOT NULL)"
    )
    current = conn.execute(
        "SELECT coalesce(max(version), 0) FROM schema_version"
    ).fetchone()[0]

    for version, script in pending_migrations("sqlite", current):
        try:
            conn.executescript(
                "BEGIN IMMEDIATE;\n"
                + script
                + f"\nINSERT INTO schema_version VALUES ({version}, datetime('now'));"
                + "\nCOMMIT;"
            )
        except Exception:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        current = version
    return current
