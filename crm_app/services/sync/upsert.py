"""Bulk, idempotent writes into the mirror: INSERT … ON CONFLICT DO UPDATE, one statement a page."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Table, delete, or_, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.schema import CallableColumnDefault, ScalarElementColumnDefault

from crm_app.extensions import db
from crm_app.models import AmoUser, Contact, Lead, Note, Pipeline, PipelineStatus, Task
from crm_app.services.sync.mappers import NOTE_SCOPES, Row, as_int, map_items

logger = logging.getLogger(__name__)

ENTITY_MODELS: dict[str, type[Contact | Lead | Task | Note]] = {
    "contacts": Contact,
    "leads": Lead,
    "tasks": Task,
    "lead_notes": Note,
    "contact_notes": Note,
}
ENTITIES: tuple[str, ...] = ("contacts", "leads", "tasks", "lead_notes", "contact_notes")
# Rows per statement: big enough to amortise round trips, small enough for SQLite's
# bound-parameter cap (32 766) with ~16 columns.
CHUNK = 1000


def entity_table(entity: str) -> Table:
    """The mirror table of a sync entity (notes share one); ValueError for an unknown one."""
    try:
        return ENTITY_MODELS[entity].__table__
    except KeyError:
        raise ValueError(f"entity must be one of {', '.join(ENTITIES)}") from None


def entity_scope(entity: str, table: Table) -> list[Any]:
    """Extra WHERE clauses that pick one sync entity's rows out of a shared table."""
    scope = NOTE_SCOPES.get(entity)
    return [table.c.entity_type == scope] if scope is not None else []


def _insert(conn: Connection, table: Table) -> Any:
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"mirror upserts support PostgreSQL and SQLite, not {name}")


def _dedupe(rows: Iterable[Row], keys: Sequence[str]) -> list[Row]:
    # A page can repeat an id when the account changes under a paging client; one statement
    # must not touch a row twice (PostgreSQL refuses), so keep the freshest copy.
    best: dict[tuple[Any, ...], Row] = {}
    for row in rows:
        key = tuple(row[k] for k in keys)
        seen = best.get(key)
        if seen is None or (row.get("updated_at") or 0) >= (seen.get("updated_at") or 0):
            best[key] = row
    return list(best.values())


def upsert_rows(
    conn: Connection, table: Table, rows: Sequence[Row], *, newer_only: bool = True
) -> int:
    """Insert or update ``rows`` in bulk; returns how many were sent.

    With ``newer_only`` an existing row is replaced only when the incoming ``updated_at`` is not
    older: a page read before a webhook's fresher copy landed cannot roll that copy back.
    Rows may differ in their keys (a lead without embedded contacts leaves its links alone);
    each key set is written with its own statement.
    """
    if not rows:
        return 0
    keys = [c.name for c in table.primary_key.columns]
    groups: dict[tuple[str, ...], list[Row]] = {}
    for row in _dedupe(rows, keys):
        groups.setdefault(tuple(row), []).append(row)
    postgres = conn.dialect.name == "postgresql"
    sent = 0
    for columns, group in groups.items():
        for start in range(0, len(group), CHUNK):
            chunk = group[start : start + CHUNK]
            if postgres:
                _pg_upsert(conn, table, columns, tuple(keys), chunk, newer_only)
            else:
                conn.execute(_generic_upsert(conn, table, columns, keys, newer_only), chunk)
            sent += len(chunk)
    return sent


def _generic_upsert(
    conn: Connection, table: Table, columns: Sequence[str], keys: Sequence[str], newer_only: bool
) -> Any:
    """INSERT … ON CONFLICT DO UPDATE run as executemany (SQLite, the embedded default)."""
    stmt = _insert(conn, table)
    update = {c: stmt.excluded[c] for c in columns if c not in keys}
    where = None
    if newer_only and "updated_at" in columns:
        where = or_(
            table.c.updated_at.is_(None),
            stmt.excluded.updated_at.is_(None),
            stmt.excluded.updated_at >= table.c.updated_at,
        )
    return stmt.on_conflict_do_update(index_elements=keys, set_=update, where=where)


@lru_cache(maxsize=64)
def _pg_sql(
    table: Table,
    columns: tuple[str, ...],
    keys: tuple[str, ...],
    newer_only: bool,
    insert_only: tuple[str, ...] = (),
) -> Any:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy leaves it untyped
    quote = dialect.identifier_preparer.quote
    name = quote(table.name)
    cols = ", ".join(quote(c) for c in columns)
    defs = ", ".join(f"{quote(c)} {table.c[c].type.compile(dialect=dialect)}" for c in columns)
    updates = ", ".join(
        f"{quote(c)} = EXCLUDED.{quote(c)}"
        for c in columns
        if c not in keys and c not in insert_only
    )
    sql = (
        f"INSERT INTO {name} ({cols}) "
        f"SELECT {cols} FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r({defs}) "
        f"ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO "
    )
    if not updates:
        return text(sql + "NOTHING")
    sql += f"UPDATE SET {updates}"
    if newer_only and "updated_at" in columns:
        sql += (
            f" WHERE {name}.updated_at IS NULL OR EXCLUDED.updated_at IS NULL"
            f" OR EXCLUDED.updated_at >= {name}.updated_at"
        )
    return text(sql)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot store {type(value).__name__} in the mirror")


def _column_defaults(table: Table, columns: tuple[str, ...]) -> dict[str, Any]:
    """Python-side defaults of the columns a row leaves out (raw SQL does not apply them)."""
    out: dict[str, Any] = {}
    for column in table.columns:
        default = column.default
        if column.name in columns or default is None or column.primary_key:
            continue
        if isinstance(default, ScalarElementColumnDefault):
            out[column.name] = default.arg
        elif isinstance(default, CallableColumnDefault):
            # Our defaults are plain functions, which SQLAlchemy wraps to ignore the context.
            out[column.name] = default.arg(None)  # type: ignore[arg-type]  # context unused
    return out


def _pg_upsert(
    conn: Connection,
    table: Table,
    columns: tuple[str, ...],
    keys: tuple[str, ...],
    rows: list[Row],
    newer_only: bool,
) -> None:
    """The whole page as one JSON document expanded by jsonb_to_recordset: one statement, one
    parameter. Serialising once in C beats adapting thousands of parameters one by one.

    Columns the rows leave out get their model default on insert and keep their stored value
    on update (a lead read without ``with=contacts`` keeps its contact links).
    """
    defaults = _column_defaults(table, columns)
    if defaults:
        rows = [{**defaults, **row} for row in rows]
    insert_columns = columns + tuple(defaults)
    payload = json.dumps(rows, ensure_ascii=False, separators=(",", ":"), default=_json_default)
    sql = _pg_sql(table, insert_columns, keys, newer_only, tuple(defaults))
    conn.execute(sql, {"rows": payload})


def delete_rows(conn: Connection, table: Table, owner_id: int, ids: Iterable[int]) -> int:
    """Delete mirror rows of one owner by amoCRM id; returns how many went."""
    wanted = sorted({i for i in (as_int(x) for x in ids) if i is not None})
    removed = 0
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        result = conn.execute(
            delete(table).where(table.c.owner_id == owner_id, table.c.id.in_(chunk))
        )
        removed += max(result.rowcount or 0, 0)
    return removed


# -- public helpers (webhooks, inbound, tests) ----------------------------------------------


def _run(work: Callable[[Connection], int], conn: Connection | None, commit: bool) -> int:
    if conn is not None:
        return work(conn)
    result = work(db.session.connection())
    if commit:
        db.session.commit()
    return result


def _upsert_entity(
    entity: str,
    owner_id: int,
    items: Sequence[dict[str, Any]],
    conn: Connection | None,
    commit: bool,
) -> int:
    rows = map_items(entity, owner_id, list(items), datetime.now(UTC))
    return _run(lambda c: upsert_rows(c, entity_table(entity), rows), conn, commit)


def upsert_contacts(
    owner_id: int,
    items: Sequence[dict[str, Any]],
    *,
    conn: Connection | None = None,
    commit: bool = True,
) -> int:
    """Upsert API-shaped contacts into the mirror; returns how many rows were written.

    Without ``conn`` the write joins ``db.session`` and commits (``commit=False`` leaves the
    commit to the caller, e.g. to mark a webhook delivery processed in the same transaction).
    """
    return _upsert_entity("contacts", owner_id, items, conn, commit)


def upsert_leads(
    owner_id: int,
    items: Sequence[dict[str, Any]],
    *,
    conn: Connection | None = None,
    commit: bool = True,
) -> int:
    """Upsert API-shaped leads; links to contacts are updated only when ``_embedded.contacts``
    is present (fetched ``with=contacts``)."""
    return _upsert_entity("leads", owner_id, items, conn, commit)


def upsert_tasks(
    owner_id: int,
    items: Sequence[dict[str, Any]],
    *,
    conn: Connection | None = None,
    commit: bool = True,
) -> int:
    """Upsert API-shaped tasks into the mirror."""
    return _upsert_entity("tasks", owner_id, items, conn, commit)


def upsert_notes(
    owner_id: int,
    entity_type: str,
    items: Sequence[dict[str, Any]],
    *,
    conn: Connection | None = None,
    commit: bool = True,
) -> int:
    """Upsert API-shaped notes of ``leads`` or ``contacts`` into the mirror."""
    entity = {"leads": "lead_notes", "contacts": "contact_notes"}[entity_type]
    return _upsert_entity(entity, owner_id, items, conn, commit)


def delete_entities(
    owner_id: int,
    entity: str,
    ids: Iterable[int],
    *,
    conn: Connection | None = None,
    commit: bool = True,
) -> int:
    """Remove deleted amoCRM entities from the mirror; returns how many rows went."""
    table = entity_table(entity)
    id_list = list(ids)
    return _run(lambda c: delete_rows(c, table, owner_id, id_list), conn, commit)


def reference_tables() -> tuple[Table, Table, Table]:
    """Pipelines, statuses and users tables (for the reference-data sync)."""
    return Pipeline.__table__, PipelineStatus.__table__, AmoUser.__table__
