"""Full-text search over one owner's mirrored contacts, deals and notes.

PostgreSQL: the tsvector documents of ``crm_app.models.search`` (Russian and English
configurations) matched against the words of the query, any of them, ranked by ``ts_rank``.
SQLite: the FTS5 tables, each word as a prefix (no stemming there), ranked by bm25. Both are kept
current by the mirror's own writes (sync, webhooks, inbound), nothing in memory.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import text

from crm_app.extensions import db
from crm_app.models.search import pg_document

TYPES = ("contacts", "leads", "notes")
TABLES = {"contacts": "crm_contacts", "leads": "crm_leads", "notes": "crm_notes"}
MAX_WORDS = 8
# Matches ranked per type: a very common word ranks the first this many matches, not all of them.
CANDIDATES = 500
# An e-mail address stays whole (PostgreSQL's parser keeps it as one token); else runs of letters
# and digits.
_WORD = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+|\w+", re.UNICODE)


def words_of(query: str) -> list[str]:
    """The searchable words of a query (letters and digits), at most MAX_WORDS."""
    return [w.lower() for w in _WORD.findall(query or "")][:MAX_WORDS]


def _title(kind: str, alias: str) -> str:
    return {
        "contacts": f"{alias}.name",
        "leads": f"{alias}.name",
        "notes": f"substr({alias}.text, 1, 200)",
    }[kind]


def _extra(kind: str, alias: str) -> str:
    if kind == "notes":
        return f"CAST({alias}.entity_type AS TEXT), CAST({alias}.entity_id AS BIGINT)"
    return "CAST(NULL AS TEXT), CAST(NULL AS BIGINT)"


def _pg(owner_id: int, words: list[str], kinds: list[str], limit: int) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"owner": owner_id, "limit": limit, "cand": CANDIDATES}
    parts = []
    for i, word in enumerate(words):
        params[f"w{i}"] = word
        parts += [f"plainto_tsquery('russian', :w{i})", f"plainto_tsquery('english', :w{i})"]
    tsquery = " || ".join(parts)
    selects = []
    for kind in kinds:
        table = TABLES[kind]
        doc = pg_document(table, "t")
        # `owner_id + 0`: keeps the planner on the GIN index. With the owner's btree index it
        # would read every row of a big owner and compute its tsvector on the fly.
        selects.append(
            f"(SELECT '{kind}' AS type, c.id, c.title, ts_rank(c.doc, {tsquery}) AS rank,"
            f" c.e_type, c.e_id, c.updated_at FROM (SELECT t.id, {_title(kind, 't')},"
            f" {doc}, {_extra(kind, 't')}, t.updated_at FROM {table} t"
            f" WHERE {doc} @@ ({tsquery}) AND t.owner_id + 0 = :owner LIMIT :cand)"
            f" AS c(id, title, doc, e_type, e_id, updated_at) ORDER BY rank DESC LIMIT :limit)"
        )
    sql = (
        "SELECT * FROM (" + " UNION ALL ".join(selects) + ") AS hits"
        " ORDER BY rank DESC, updated_at DESC NULLS LAST LIMIT :limit"
    )
    rows = db.session.execute(text(sql), params).all()
    return [
        _hit(r.type, r.id, r.title, float(r.rank), r.e_type, r.e_id, r.updated_at) for r in rows
    ]


def _sqlite(owner_id: int, words: list[str], kinds: list[str], limit: int) -> list[dict[str, Any]]:
    # The owner is a column of the FTS table, so the match itself is per owner and FTS5 ranks
    # (bm25) and cuts inside its own index.
    match = f'owner_id : "{int(owner_id)}" AND (' + " OR ".join(f'"{w}"*' for w in words) + ")"
    hits: list[dict[str, Any]] = []
    for kind in kinds:
        table = TABLES[kind]
        fts = f"{table}_fts"
        sql = (
            f"SELECT t.id, {_title(kind, 't')} AS title, f.rank, {_extra(kind, 't')},"
            f" t.updated_at FROM (SELECT rowid, rank FROM {fts} WHERE {fts} MATCH :match"
            f" ORDER BY rank LIMIT :limit) AS f JOIN {table} t ON t.rowid = f.rowid"
            f" WHERE t.owner_id = :owner ORDER BY f.rank"
        )
        for row in db.session.execute(
            text(sql), {"match": match, "owner": owner_id, "limit": limit}
        ).all():
            # bm25 is lower-is-better and negative; the API's rank is higher-is-better.
            hits.append(_hit(kind, row[0], row[1], -float(row[2]), row[3], row[4], row[5]))
    hits.sort(key=lambda h: (h["rank"], h["updated_at"] or 0), reverse=True)
    return hits[:limit]


def _hit(
    kind: str,
    entity_id: Any,
    title: Any,
    rank: float,
    e_type: Any,
    e_id: Any,
    updated_at: Any,
) -> dict[str, Any]:
    return {
        "type": kind,
        "id": int(entity_id),
        "title": title,
        "rank": round(rank, 6),
        "entity_type": e_type,
        "entity_id": int(e_id) if e_id is not None else None,
        "updated_at": int(updated_at) if updated_at is not None else None,
    }


def parse_types(value: str | None) -> list[str] | None:
    """`contacts,leads` → the kinds; None when a name is unknown."""
    if not value:
        return list(TYPES)
    kinds = [k.strip() for k in value.split(",") if k.strip()]
    if not kinds or any(k not in TYPES for k in kinds):
        return None
    return list(dict.fromkeys(kinds))


def search(
    owner_id: int, query: str, *, kinds: list[str] | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """The owner's best matches across `kinds`, best first; [] when the query has no words."""
    words = words_of(query)
    if not words:
        return []
    chosen = kinds or list(TYPES)
    if db.engine.dialect.name == "postgresql":
        return _pg(owner_id, words, chosen, limit)
    return _sqlite(owner_id, words, chosen, limit)
