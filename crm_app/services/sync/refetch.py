"""Re-read given entity ids from amoCRM: refresh those that exist, delete those that are gone."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection

from crm_app.amocrm.client import AmoCRMClient
from crm_app.extensions import db
from crm_app.services.amo import client_for_owner, sync_retry_policy
from crm_app.services.sync.mappers import NOTE_SCOPES, as_int, map_items
from crm_app.services.sync.paging import PAGE_LIMIT, fetch_page
from crm_app.services.sync.upsert import delete_rows, entity_table, upsert_rows

logger = logging.getLogger(__name__)


def _get_one(client: AmoCRMClient, entity: str, entity_id: int) -> dict[str, Any] | None:
    if entity == "contacts":
        return client.get_contact(entity_id)
    if entity == "leads":
        return client.get_lead(entity_id, with_="contacts")
    if entity in NOTE_SCOPES:
        return client.get_note(NOTE_SCOPES[entity], entity_id)
    return client.get_task(entity_id)


def _refetch_batch(
    client: AmoCRMClient, entity: str, batch: list[int]
) -> tuple[list[dict[str, Any]], list[int]]:
    """(items found, ids confirmed gone) for at most 250 ids."""
    wanted = set(batch)
    page = fetch_page(client, entity, 1, filter_={"id": batch})
    returned = [i for i in page.items if isinstance(i, dict)]
    ids = {as_int(i.get("id")) for i in returned}
    found = [i for i in returned if as_int(i.get("id")) in wanted]
    if ids - wanted:
        # The account ignored filter[id] (no API-filter add-on): this was just the first page
        # of everything, so nothing can be concluded from what it lacks.
        logger.info("amoCRM ignored filter[id] for %s; checking ids one by one", entity)
    missing = sorted(wanted - {as_int(i.get("id")) for i in found})
    gone: list[int] = []
    for entity_id in missing:
        # A 204 for the single id is the only proof of deletion we accept.
        item = _get_one(client, entity, entity_id)
        if item is None:
            gone.append(entity_id)
        else:
            found.append(item)
    return found, gone


def refetch_entities(
    owner_id: int,
    entity: str,
    ids: Iterable[int],
    *,
    client: AmoCRMClient | None = None,
    conn: Connection | None = None,
) -> tuple[int, int]:
    """Re-read ``ids`` by ``filter[id][]`` (≤250 a request, under the shared rate limit).

    Existing ones are upserted; ids that do not come back and answer 204 on their own are
    deleted from the mirror. Returns ``(upserted, deleted)``. Without ``conn`` the writes go
    through ``db.session`` and are committed.
    """
    table = entity_table(entity)
    wanted = sorted({i for i in (as_int(x) for x in ids) if i is not None and i > 0})
    if not wanted:
        return 0, 0
    own_client = client is None
    api = client if client is not None else client_for_owner(owner_id, retry=sync_retry_policy())
    upserted = deleted = 0
    try:
        for start in range(0, len(wanted), PAGE_LIMIT):
            batch = wanted[start : start + PAGE_LIMIT]
            found, gone = _refetch_batch(api, entity, batch)
            target = conn if conn is not None else db.session.connection()
            rows = map_items(entity, owner_id, found, datetime.now(UTC))
            upserted += upsert_rows(target, table, rows)
            deleted += delete_rows(target, table, owner_id, gone)
            if conn is None:
                db.session.commit()
    finally:
        if own_client:
            api.close()
    return upserted, deleted
