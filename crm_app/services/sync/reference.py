"""Reference data: pipelines with statuses, users, loss reasons and task types."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, not_, tuple_

from crm_app.amocrm.client import AmoCRMClient
from crm_app.amocrm.errors import AmoCRMBlocked, AmoCRMNotFound
from crm_app.extensions import db
from crm_app.models import LossReason, TaskType
from crm_app.services.amo import client_for_owner
from crm_app.services.sync.mappers import as_int, map_pipeline, map_status, map_user
from crm_app.services.sync.upsert import reference_tables, upsert_rows

logger = logging.getLogger(__name__)


def fetch_reference(
    client: AmoCRMClient,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
    """(pipelines, users, users_error); a users 403 for a non-admin grant is an answer, not a
    failure. A gateway 403 (HTML or plain text) is an account block and propagates."""
    pipelines = client.get_pipelines()
    users: list[dict[str, Any]] = []
    users_error = None
    try:
        users = client.get_users()
    except AmoCRMBlocked as exc:
        if exc.from_gateway:
            raise
        users_error = "forbidden"
        logger.info("amoCRM users list is forbidden for this grant (needs an admin)")
    return pipelines, users, users_error


def store_reference(
    conn: Connection,
    owner_id: int,
    pipelines: list[dict[str, Any]],
    users: list[dict[str, Any]],
) -> dict[str, int]:
    """Upsert pipelines, statuses and users; drop pipelines and statuses amoCRM no longer has."""
    now = datetime.now(UTC)
    p_table, s_table, u_table = reference_tables()
    p_rows = [map_pipeline(owner_id, p, now) for p in pipelines]
    p_rows = [r for r in p_rows if r["id"] is not None]
    s_rows = []
    for pipeline in pipelines:
        pid = map_pipeline(owner_id, pipeline, now)["id"]
        statuses = (pipeline.get("_embedded") or {}).get("statuses") or []
        for status in statuses:
            if isinstance(status, dict) and pid is not None:
                row = map_status(owner_id, pid, status)
                if row["id"] is not None:
                    s_rows.append(row)
    u_rows = [r for r in (map_user(owner_id, u, now) for u in users) if r["id"] is not None]
    upsert_rows(conn, p_table, p_rows)
    upsert_rows(conn, s_table, s_rows)
    upsert_rows(conn, u_table, u_rows)
    if p_rows:
        conn.execute(
            delete(s_table).where(
                s_table.c.owner_id == owner_id,
                not_(
                    tuple_(s_table.c.pipeline_id, s_table.c.id).in_(
                        [(r["pipeline_id"], r["id"]) for r in s_rows]
                    )
                ),
            )
        )
        conn.execute(
            delete(p_table).where(
                and_(
                    p_table.c.owner_id == owner_id,
                    p_table.c.id.not_in([r["id"] for r in p_rows]),
                )
            )
        )
    return {"pipelines": len(p_rows), "statuses": len(s_rows), "users": len(u_rows)}


def fetch_choices(client: AmoCRMClient) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(loss reasons, task types). Loss reasons are documented by Kommo and the official
    library; an account without the route (404) simply has none."""
    try:
        reasons = client.get_loss_reasons()
    except AmoCRMNotFound:
        reasons = []
    account = client.get_account(with_="task_types")
    raw = account.get("_embedded")
    embedded: dict[str, Any] = raw if isinstance(raw, dict) else {}
    types = embedded.get("task_types") or []
    return [r for r in reasons if isinstance(r, dict)], [t for t in types if isinstance(t, dict)]


def store_choices(
    conn: Connection, owner_id: int, reasons: list[dict[str, Any]], types: list[dict[str, Any]]
) -> dict[str, int]:
    """Replace the owner's loss reasons and task types with amoCRM's current lists."""
    now = datetime.now(UTC)
    r_rows = [
        {"owner_id": owner_id, "id": as_int(r.get("id")), "name": str(r.get("name") or ""),
         "sort": as_int(r.get("sort")) or 0, "synced_at": now}
        for r in reasons
    ]  # fmt: skip
    t_rows = [
        {"owner_id": owner_id, "id": as_int(t.get("id")), "name": str(t.get("name") or ""),
         "code": t.get("code"), "color": t.get("color"), "synced_at": now}
        for t in types
    ]  # fmt: skip
    r_rows = [r for r in r_rows if r["id"] is not None]
    t_rows = [t for t in t_rows if t["id"] is not None]
    for table, rows in ((LossReason.__table__, r_rows), (TaskType.__table__, t_rows)):
        conn.execute(delete(table).where(table.c.owner_id == owner_id))
        if rows:
            conn.execute(table.insert(), rows)
    return {"loss_reasons": len(r_rows), "task_types": len(t_rows)}


def sync_reference_data(
    owner_id: int, *, client: AmoCRMClient | None = None, conn: Connection | None = None
) -> dict[str, Any]:
    """Mirror the owner's pipelines (with statuses) and users; returns counts.

    ``{"pipelines": n, "statuses": n, "users": n, "users_error": None | "forbidden"}``. Without
    ``conn`` it writes through ``db.session`` and commits.
    """
    own_client = client is None
    api = client if client is not None else client_for_owner(owner_id)
    try:
        pipelines, users, users_error = fetch_reference(api)
        reasons, types = fetch_choices(api)
    finally:
        if own_client:
            api.close()
    if conn is not None:
        with conn.begin():
            counts = store_reference(conn, owner_id, pipelines, users)
            counts.update(store_choices(conn, owner_id, reasons, types))
    else:
        counts = store_reference(db.session.connection(), owner_id, pipelines, users)
        counts.update(store_choices(db.session.connection(), owner_id, reasons, types))
        db.session.commit()
    summary: dict[str, Any] = {**counts, "users_error": users_error}
    logger.info("owner %s reference data: %s", owner_id, summary)
    return summary
