"""
What the store's statements rely on in both schemas, read from the
databases' own catalogs after every migration: a nullable column's default
is NULL, so a multi-row insert may leave out a column that is None in every
row (L{maxq.store.sql.SqlTransaction._insert_many}).
"""

from .test_store import store, store_config  # noqa: F401 (fixtures)

SQLITE_COLUMNS = (
    "SELECT m.name, p.name, p.\"notnull\", p.dflt_value FROM sqlite_master m, "
    "pragma_table_info(m.name) p WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'")
POSTGRES_COLUMNS = (
    "SELECT table_name, column_name, is_nullable = 'NO', column_default "
    "FROM information_schema.columns WHERE table_schema = current_schema()")


async def test_no_nullable_column_has_a_default_but_null(store):  # noqa: F811
    sql = POSTGRES_COLUMNS if store.peers.shared else SQLITE_COLUMNS

    async def columns(tx):
        _, rows, _ = await tx._execute(sql)
        return rows

    rows = await store.read(columns)
    assert len(rows) > 50
    defaulted = [(table, column, default) for table, column, not_null, default in rows
                 if not not_null and default is not None and default.upper() != "NULL"]
    assert defaulted == []
