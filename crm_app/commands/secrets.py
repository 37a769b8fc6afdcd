"""`flask secrets ...`: generate a CRM_ENCRYPTION_KEY and re-encrypt stored secrets with it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import click
import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken
from flask import current_app
from flask.cli import with_appcontext

from crm_app import crypto
from crm_app.extensions import db

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 500


@dataclass
class ColumnReport:
    """What rotation did to one encrypted column."""

    table: str
    column: str
    rotated: int = 0
    current: int = 0
    empty: int = 0
    changed: int = 0  # rewritten by someone else between our read and our write
    failed: list[str] = field(default_factory=list)  # primary keys only, never values

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column}"

    def line(self) -> str:
        return (
            f"{self.name}: rotated={self.rotated} current={self.current} empty={self.empty} "
            f"changed={self.changed} failed={len(self.failed)}"
        )


def encrypted_columns(metadata: sa.MetaData) -> dict[sa.Table, list[sa.Column[Any]]]:
    """Every EncryptedText column of every table, found by type so new columns are covered."""
    found: dict[sa.Table, list[sa.Column[Any]]] = {}
    for table in metadata.sorted_tables:
        columns = [c for c in table.columns if isinstance(c.type, crypto.EncryptedText)]
        if columns:
            found[table] = columns
    return found


def _raw(column: sa.Column[Any]) -> sa.ColumnElement[Any]:
    # Read and compare the stored ciphertext as plain text, bypassing EncryptedText.
    return sa.type_coerce(column, sa.Text())


def _batches(
    table: sa.Table, columns: list[sa.Column[Any]], batch_size: int
) -> Iterator[list[sa.Row[Any]]]:
    """Keyset-paginated rows (primary key + raw ciphertexts), in primary-key order."""
    pk = list(table.primary_key.columns)
    if not pk:
        raise click.ClickException(f"table {table.name} has no primary key; cannot rotate")
    key = pk[0] if len(pk) == 1 else sa.tuple_(*pk)
    query = sa.select(*pk, *(_raw(c).label(c.name) for c in columns)).order_by(*pk)
    last: tuple[Any, ...] | None = None
    while True:
        page = query
        if last is not None:
            page = page.where(key > (last[0] if len(pk) == 1 else sa.tuple_(*last)))
        rows = list(db.session.execute(page.limit(batch_size)))
        if not rows:
            return
        yield rows
        last = tuple(rows[-1][: len(pk)])


def _is_current(newest: Fernet, token: str) -> bool:
    try:
        newest.extract_timestamp(token.encode())  # verifies the signature with this key only
    except InvalidToken:
        return False
    return True


def rotate_all(batch_size: int = DEFAULT_BATCH_SIZE, dry_run: bool = False) -> list[ColumnReport]:
    """Re-encrypt every stored secret with the first CRM_ENCRYPTION_KEY, batch by batch."""
    keys = crypto.parse_keys(str(current_app.config["CRM_ENCRYPTION_KEY"]))
    newest = Fernet(keys[0])
    existing = set(sa.inspect(db.engine).get_table_names())
    reports: list[ColumnReport] = []
    for table, columns in encrypted_columns(db.metadata).items():
        by_name = {c.name: ColumnReport(table.name, c.name) for c in columns}
        reports.extend(by_name.values())
        if table.name not in existing:
            logger.warning("table %s does not exist yet; run `flask db upgrade`", table.name)
            continue
        pk = list(table.primary_key.columns)
        for rows in _batches(table, columns, batch_size):
            for row in rows:
                pk_values = tuple(row[: len(pk)])
                for column in columns:
                    report = by_name[column.name]
                    stored = row._mapping[column.name]
                    if stored is None:
                        report.empty += 1
                        continue
                    if _is_current(newest, stored):
                        report.current += 1
                        continue
                    try:
                        fresh = crypto.rotate(stored)
                    except InvalidToken:
                        report.failed.append(",".join(str(v) for v in pk_values))
                        continue
                    if dry_run:
                        report.rotated += 1
                        continue
                    # Compare-and-set: a token refresh that wrote meanwhile must not be undone
                    # (amoCRM refresh tokens are single-use).
                    result = cast(
                        "sa.CursorResult[Any]",
                        db.session.execute(
                            sa.update(table)
                            .where(*(c == v for c, v in zip(pk, pk_values, strict=True)))
                            .where(_raw(column) == stored)
                            .values({column.name: sa.type_coerce(fresh, sa.Text())})
                        ),
                    )
                    if result.rowcount == 1:
                        report.rotated += 1
                    else:
                        report.changed += 1
            if dry_run:
                db.session.rollback()
            else:
                db.session.commit()
    for report in reports:
        logger.info(
            "secrets rotate %s rotated=%d current=%d empty=%d changed=%d failed=%d",
            report.name,
            report.rotated,
            report.current,
            report.empty,
            report.changed,
            len(report.failed),
        )
    return reports


group = click.Group("secrets", help="Manage CRM_ENCRYPTION_KEY and the secrets it protects.")


@group.command("generate-key")
def generate_key() -> None:
    """Print a new Fernet key for CRM_ENCRYPTION_KEY."""
    click.echo(Fernet.generate_key().decode())
    click.echo(
        "To rotate: put the new key first, keep the old ones after it "
        "(CRM_ENCRYPTION_KEY=NEW,OLD), restart, run `flask secrets rotate`, then drop OLD.",
        err=True,
    )


@group.command("rotate")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Rows read and committed per batch.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be re-encrypted; write nothing.")
@with_appcontext
def rotate(batch_size: int, dry_run: bool) -> None:
    """Re-encrypt every stored secret with the first CRM_ENCRYPTION_KEY."""
    reports = rotate_all(batch_size=batch_size, dry_run=dry_run)
    for report in reports:
        click.echo(report.line())
        if report.failed:
            click.echo(f"  undecryptable rows (primary key): {'; '.join(report.failed)}")
    totals = {
        "rotated": sum(r.rotated for r in reports),
        "current": sum(r.current for r in reports),
        "empty": sum(r.empty for r in reports),
        "changed": sum(r.changed for r in reports),
        "failed": sum(len(r.failed) for r in reports),
    }
    prefix = "dry run, would rotate" if dry_run else "total"
    click.echo(f"{prefix}: " + " ".join(f"{k}={v}" for k, v in totals.items()))
    if totals["failed"]:
        raise click.ClickException(
            "some secrets could not be decrypted with any CRM_ENCRYPTION_KEY; "
            "add the key they were written with and run again"
        )
