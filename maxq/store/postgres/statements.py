"""
Statement texts as the PostgreSQL backend sends them: psycopg2's
placeholders, and the prepared form of the ones used often.
"""

from __future__ import annotations

_STATEMENT_CACHE = 4096
_NOT_PLAIN = (" FOR UPDATE", " FOR SHARE", " FOR NO KEY", " FOR KEY", "PG_NOTIFY",
              "NEXTVAL", "SETVAL", "PG_ADVISORY")
# Statements are prepared (parsed and planned once per connection, not on
# every call) from their third use on, up to a bound per connection; those
# with long IN lists or multi-row VALUES (many parameters) are not.
PREPARE = True
_PREPARE_AFTER = 2
_PREPARE_MAX_PARAMS = 32
_PREPARED_PER_CONNECTION = 200
_PREPARABLE = ("SELECT", "UPDATE", "INSERT", "DELETE")


class _Statement:
    """
    One statement text, as psycopg2 sends it, and as a prepared statement.
    """

    __slots__ = ("text", "plain", "name", "prepare", "execute", "preparable", "uses")

    def __init__(self, sql: str, number: int):
        upper = sql.upper()
        # A plain read: a SELECT that locks nothing and changes nothing,
        # which may run before the transaction's BEGIN.
        self.plain = (upper.lstrip().startswith("SELECT")
                      and not any(word in upper for word in _NOT_PLAIN))
        # Shared statements use ?; psycopg2 wants %s (and a literal % doubled).
        self.text = sql.replace("%", "%%").replace("?", "%s")
        count = sql.count("?")
        self.name = f"maxq_{number}"
        self.preparable = (count <= _PREPARE_MAX_PARAMS and len(sql) <= 8000
                           and upper.lstrip().startswith(_PREPARABLE))
        self.prepare = self.execute = ""
        if self.preparable:
            pieces = sql.replace("%", "%%").split("?")
            dollar = pieces[0] + "".join(f"${i}{piece}"
                                         for i, piece in enumerate(pieces[1:], 1))
            self.prepare = f"PREPARE {self.name} AS {dollar}"
            self.execute = (f"EXECUTE {self.name}({', '.join(['%s'] * count)})"
                            if count else f"EXECUTE {self.name}")
        self.uses = 0


class StatementCache:
    """
    The L{_Statement}s of one store, by text (the set of texts is small).
    Per store: what a statement learns (its uses, whether it can be
    prepared) belongs to the database that store talks to.
    """

    def __init__(self, size: int = _STATEMENT_CACHE):
        self.size = size
        self._statements: dict[str, _Statement] = {}

    def __len__(self) -> int:
        return len(self._statements)

    def get(self, sql: str) -> _Statement:
        """
        The cached L{_Statement} of a text; past C{size} texts, a fresh one
        each time, never prepared.
        """
        statements = self._statements
        found = statements.get(sql)
        if found is None:
            found = _Statement(sql, len(statements))
            if len(statements) < self.size:
                statements[sql] = found
            else:
                found.preparable = False
        return found
