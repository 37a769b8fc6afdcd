"""Stored tsvector documents for full-text search on PostgreSQL (ranking reads the column
instead of parsing each candidate's text at query time).

Revision ID: 0003
Revises: 0002
"""

from alembic import op

from crm_app.models.search import DOC_COLUMN, SEARCHED, pg_document, upgrade_documents

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    upgrade_documents(op.get_bind())


def downgrade():
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for table in SEARCHED:
        op.execute(f"DROP INDEX IF EXISTS ix_{table}_fts")
        op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS {DOC_COLUMN}")
        op.execute(
            f"CREATE INDEX IF NOT EXISTS ix_{table}_fts ON {table} USING gin (({pg_document(table)}))"
        )
