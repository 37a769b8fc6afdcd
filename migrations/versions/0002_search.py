"""Full-text search over the mirror (tsvector GIN indexes / SQLite FTS5 tables and triggers).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

from crm_app.models.search import install, uninstall

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    install(op.get_bind())


def downgrade():
    uninstall(op.get_bind())
