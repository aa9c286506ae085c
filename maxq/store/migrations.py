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


async def apply_migrations(backend: str, current: int, apply_one) -> int:
    """
    Apply C{backend}'s migrations past version C{current}, in order, and
    return the version reached.  C{await apply_one(version, script)} runs
    one script and records its version in C{schema_version}, in one
    transaction; what surrounds the loop (a lock, the connection) is the
    caller's.  The SQLite side passes an C{apply_one} that never suspends
    and drives this synchronously (L{migrate_sqlite}).
    """
    for version, path in migrations(backend):
        if version <= current:
            continue
        await apply_one(version, path.read_text())
        current = version
    return current


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

    async def apply_one(version: int, script: str) -> None:
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

    loop = apply_migrations("sqlite", current, apply_one)
    try:
        loop.send(None)
    except StopIteration as done:
        return done.value
    loop.close()
    raise RuntimeError("a SQLite migration suspended")  # apply_one never does
