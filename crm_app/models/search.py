"""Full-text search objects over the mirror: plain DDL, attached to the mirror tables.

PostgreSQL: GIN indexes on ``to_tsvector('russian', …) || to_tsvector('english', …)`` of each
searchable table (Russian stems for Cyrillic words, English for Latin ones; amoCRM accounts mix
both), plus GIN indexes on the contacts' phone and e-mail arrays for the people lookup. The
rows are the mirror rows themselves, so the sync and the webhooks keep the search current with no
extra writes. SQLite (the embedded default): an FTS5 table per searchable table, external
content, kept by triggers.

The same statements run from ``create_all`` (the ``after_create`` listeners below) and from
migration 0002; Alembic's comparison ignores them (``is_search_object``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection

from crm_app.models.mirror import Contact, Lead, Note

# table → the text columns searched, most telling first (the first one weighs most).
SEARCHED: dict[str, tuple[str, ...]] = {
    "crm_contacts": ("name", "first_name", "last_name", "email", "phone"),
    "crm_leads": ("name",),
    "crm_notes": ("text",),
}
CONFIGS = ("russian", "english")


def pg_document(table: str, alias: str | None = None) -> str:
    """The tsvector expression of a table's rows; queries must repeat it to use the index."""
    prefix = f"{alias}." if alias else ""
    columns = SEARCHED[table]
    text = " || ' ' || ".join(f"coalesce({prefix}{c}, '')" for c in columns)
    return " || ".join(f"to_tsvector('{config}', {text})" for config in CONFIGS)


def _pg_statements(table: str) -> list[str]:
    out = [
        f"CREATE INDEX IF NOT EXISTS ix_{table}_fts ON {table} USING gin (({pg_document(table)}))"
    ]
    if table == "crm_leads":  # a person's deals where they are not the main contact
        out.append(
            "CREATE INDEX IF NOT EXISTS ix_crm_leads_contact_ids_gin"
            " ON crm_leads USING gin (contact_ids jsonb_path_ops)"
        )
    if table == "crm_contacts":
        out += [
            "CREATE INDEX IF NOT EXISTS ix_crm_contacts_phones_gin"
            " ON crm_contacts USING gin (phones jsonb_path_ops)",
            "CREATE INDEX IF NOT EXISTS ix_crm_contacts_emails_gin"
            " ON crm_contacts USING gin (emails jsonb_path_ops)",
        ]
    return out


def _sqlite_statements(table: str) -> list[str]:
    fts = f"{table}_fts"
    # The owner is indexed as a column too: a query names it, so one owner's matches are all
    # FTS5 ranks (see crm_app.services.search).
    cols = ("owner_id", *SEARCHED[table])
    names = ", ".join(cols)
    new = ", ".join(f"new.{c}" for c in cols)
    old = ", ".join(f"old.{c}" for c in cols)
    return [
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {fts} USING fts5({names}, content='{table}',"
        " tokenize='unicode61 remove_diacritics 2')",
        f"CREATE TRIGGER IF NOT EXISTS {fts}_ai AFTER INSERT ON {table} BEGIN"
        f" INSERT INTO {fts}(rowid, {names}) VALUES (new.rowid, {new}); END",
        f"CREATE TRIGGER IF NOT EXISTS {fts}_ad AFTER DELETE ON {table} BEGIN"
        f" INSERT INTO {fts}({fts}, rowid, {names}) VALUES ('delete', old.rowid, {old}); END",
        f"CREATE TRIGGER IF NOT EXISTS {fts}_au AFTER UPDATE ON {table} BEGIN"
        f" INSERT INTO {fts}({fts}, rowid, {names}) VALUES ('delete', old.rowid, {old});"
        f" INSERT INTO {fts}(rowid, {names}) VALUES (new.rowid, {new}); END",
        # Rows that were there before (an upgrade of a filled database).
        f"INSERT INTO {fts}({fts}) VALUES ('rebuild')",
    ]


def install(conn: Connection, tables: tuple[str, ...] = tuple(SEARCHED)) -> None:
    """Create the search objects of `tables` on this connection's database."""
    dialect = conn.dialect.name
    for table in tables:
        statements = (
            _pg_statements(table)
            if dialect == "postgresql"
            else _sqlite_statements(table)
            if dialect == "sqlite"
            else []
        )
        for sql in statements:
            conn.exec_driver_sql(sql)


def uninstall(conn: Connection) -> None:
    """Drop every search object (migration 0002's downgrade)."""
    for table in SEARCHED:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS ix_{table}_fts")
        elif conn.dialect.name == "sqlite":
            for suffix in ("ai", "ad", "au"):
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_fts_{suffix}")
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}_fts")
    if conn.dialect.name == "postgresql":
        for name in _LOOKUP_INDEXES:
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")


def is_search_object(name: str) -> bool:
    """Names Alembic's comparison must leave alone (FTS5 tables and their shadow tables, the
    tsvector and array indexes): they are not expressible as models."""
    return (
        any(name == f"ix_{table}_fts" or name.startswith(f"{table}_fts") for table in SEARCHED)
        or name in _LOOKUP_INDEXES
    )


_LOOKUP_INDEXES = (
    "ix_crm_contacts_phones_gin",
    "ix_crm_contacts_emails_gin",
    "ix_crm_leads_contact_ids_gin",
)


def _after_create(target: Any, connection: Connection, **_kw: Any) -> None:
    install(connection, (target.name,))


for _model in (Contact, Lead, Note):
    event.listen(_model.__table__, "after_create", _after_create)
