"""
PostgreSQL for tests: one database per test session, one schema per test.

The server comes from C{MAXQ_TEST_DATABASE_URL}, else 127.0.0.1:5432 as
user postgres.  When neither answers, PostgreSQL tests are skipped with the
reason, unless C{MAXQ_REQUIRE_POSTGRES=1} (set by C{.ci/run}), which makes
that an error.
"""

from __future__ import annotations

import os
import secrets
from urllib.parse import urlencode, urlsplit, urlunsplit

import pytest

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _admin_url() -> str:
    return os.environ.get("MAXQ_TEST_DATABASE_URL") or DEFAULT_URL


def _with_database(url: str, database: str, **query) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database, query=urlencode(query)))


class PostgresServer:
    """
    A throwaway database on the test PostgreSQL server.
    """

    def __init__(self):
        import psycopg2

        self.admin_url = _admin_url()
        self.database = f"maxq_test_{os.getpid()}_{secrets.token_hex(3)}"
        conn = psycopg2.connect(self.admin_url, connect_timeout=3)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.database}"')
        conn.close()
        self.url = _with_database(self.admin_url, self.database)
        self._shared: tuple[str, str] | None = None
        # schema -> its tables in the order empty_schema deletes from them
        self._tables: dict[str, list[str]] = {}

    def _connect(self):
        import psycopg2

        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        return conn

    def new_schema(self) -> tuple[str, str]:
        """
        A fresh, empty schema; returns C{(name, URL whose search_path is it)}.
        """
        name = "t_" + secrets.token_hex(5)
        conn = self._connect()
        with conn.cursor() as cur:
            cur.execute(f'CREATE SCHEMA "{name}"')
        conn.close()
        url = _with_database(self.admin_url, self.database,
                             options=f"-csearch_path={name}")
        return name, url

    def drop_schema(self, name: str) -> None:
        """
        Drop a test's schema.  A server that left a transaction open would
        block this forever (and with it the reactor, which a blocking
        teardown does not run): fail loudly instead, after clearing the way
        for the next test.
        """
        import psycopg2

        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SET lock_timeout = '5s'")
                try:
                    cur.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
                except psycopg2.errors.LockNotAvailable:
                    cur.execute(
                        "SELECT pid, state, left(query, 200) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid() "
                        "AND state LIKE 'idle in transaction%%'", (self.database,))
                    leaked = cur.fetchall()
                    cur.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (self.database,))
                    cur.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
                    raise AssertionError(
                        f"a server left transactions open after stopping: {leaked}")
        finally:
            conn.close()

    def shared_schema(self) -> tuple[str, str]:
        """
        The session's reusable schema (migrated by the first server that
        uses it, emptied by L{empty_schema} after each test).
        """
        if self._shared is None:
            self._shared = self.new_schema()
        return self._shared

    def empty_schema(self, name: str) -> None:
        """
        Remove every row a test left, keeping the tables: far cheaper than a
        new schema and a migration per test.  Fails loudly, like
        L{drop_schema}, if a server left a transaction open.

        The tables are locked as C{TRUNCATE} would lock them (so an open
        transaction is found the same way), then emptied with C{DELETE},
        children first, and their sequences restarted: on these few rows
        that takes about 10 ms where C{TRUNCATE} of the 18 tables takes
        300-400 ms (it makes new files for each table and index).
        """
        import psycopg2

        conn = self._connect()
        try:
            with conn.cursor() as cur:
                # Emptying needs no durability: the commit does not wait
                # for the disk (the rows are gone for everyone at once).
                cur.execute("SET lock_timeout = '5s'; SET synchronous_commit = off")
                tables = self._tables.get(name) or _tables_children_first(cur, name)
                if not tables:
                    return
                self._tables[name] = tables
                quoted = ", ".join(f'"{name}"."{t}"' for t in tables)
                cur.execute("BEGIN")
                try:
                    cur.execute(f"LOCK TABLE {quoted} IN ACCESS EXCLUSIVE MODE")
                except psycopg2.errors.LockNotAvailable:
                    cur.execute("ROLLBACK")
                    cur.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (self.database,))
                    cur.execute(f"TRUNCATE {quoted} RESTART IDENTITY")
                    raise AssertionError("a server left transactions open after stopping")
                for table in tables:
                    cur.execute(f'DELETE FROM "{name}"."{table}"')
                # The sequences the tables own, as RESTART IDENTITY finds them.
                cur.execute(
                    "SELECT setval(s.oid, q.seqstart, false) FROM pg_class s "
                    "JOIN pg_sequence q ON q.seqrelid = s.oid "
                    "JOIN pg_depend d ON d.objid = s.oid AND d.deptype IN ('a', 'i') "
                    "JOIN pg_class t ON t.oid = d.refobjid "
                    "JOIN pg_namespace n ON n.oid = t.relnamespace "
                    "WHERE s.relkind = 'S' AND n.nspname = %s AND t.relname = ANY(%s)",
                    (name, tables))
                cur.execute("COMMIT")
        finally:
            conn.close()

    def execute(self, sql: str, schema: str | None = None):
        conn = self._connect()
        with conn.cursor() as cur:
            if schema:
                cur.execute(f'SET search_path TO "{schema}"')
            cur.execute(sql)
            rows = cur.fetchall() if cur.description else None
        conn.close()
        return rows

    def drop(self) -> None:
        import psycopg2

        conn = psycopg2.connect(self.admin_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()", (self.database,)
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{self.database}"')
        conn.close()


def _tables_children_first(cur, schema: str) -> list[str]:
    """
    The tables of C{schema} but C{schema_version}, each after every table
    whose foreign keys point at it (so that C{DELETE} in this order
    violates none).
    """
    cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s "
                "AND tablename <> 'schema_version' ORDER BY tablename", (schema,))
    tables = [t for (t,) in cur.fetchall()]
    cur.execute(
        "SELECT c.relname, p.relname FROM pg_constraint f "
        "JOIN pg_class c ON c.oid = f.conrelid JOIN pg_class p ON p.oid = f.confrelid "
        "JOIN pg_namespace n ON n.oid = f.connamespace "
        "WHERE f.contype = 'f' AND n.nspname = %s", (schema,))
    parents: dict[str, set[str]] = {t: set() for t in tables}
    for child, parent in cur.fetchall():
        if child in parents and parent != child:
            parents[child].add(parent)
    # Children first: a table goes once no remaining table refers to it.
    ordered: list[str] = []
    remaining = set(tables)
    while remaining:
        referenced = {p for t in remaining for p in parents[t]}
        ready = sorted(t for t in remaining if t not in referenced) or sorted(remaining)
        ordered.extend(ready)
        remaining -= set(ready)
    return ordered


_server: PostgresServer | None = None
_failure: str | None = None


def postgres_server() -> PostgresServer:
    """
    The session's database, created on first use; skips (or fails, when
    required) if PostgreSQL cannot be reached.
    """
    global _server, _failure
    if _server is None and _failure is None:
        try:
            _server = PostgresServer()
        except Exception as e:  # any reason it cannot be used
            _failure = f"PostgreSQL unavailable at {_admin_url()}: {e}"
    if _server is None:
        if os.environ.get("MAXQ_REQUIRE_POSTGRES") == "1":
            pytest.fail(_failure + " (MAXQ_REQUIRE_POSTGRES=1)")
        pytest.skip(_failure)
    return _server


def drop_session_database() -> None:
    global _server
    if _server is not None:
        _server.drop()
        _server = None
