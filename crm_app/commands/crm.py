"""`flask crm ...` commands: `crm sync` runs a sync in the foreground with live progress."""

from __future__ import annotations

import sys
import time
from typing import Any

import click
from flask.cli import with_appcontext
from sqlalchemy import select

group = click.Group("crm", help="amoCRM integration commands.")

ENTITY_CHOICES = ("contacts", "leads", "tasks", "notes", "all")


class _ProgressLine:
    """One live status line on a terminal; plain periodic lines when output is piped."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last_plain = 0.0
        self.last_entity: str | None = None
        self.width = 0

    def __call__(self, state: dict[str, Any]) -> None:
        entity = state.get("entity") or "reference"
        text = (
            f"{entity}: {state['pages']} pages, {state['records']} records, "
            f"{state['rate']:.0f} rec/s, {state['requests']} requests"
            + (f", {state['rate_limited']} × 429" if state.get("rate_limited") else "")
        )
        if self.tty:
            pad = " " * max(0, self.width - len(text))
            self.stream.write("\r" + text + pad)
            self.stream.flush()
            self.width = len(text)
            return
        now = time.monotonic()
        if entity != self.last_entity or now - self.last_plain >= 5:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last_plain, self.last_entity = now, entity

    def done(self) -> None:
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()


def _follow(run_id: int, progress: _ProgressLine) -> None:
    """Show the progress of a run another worker executes, until it ends (or take it over
    here if that worker goes silent)."""
    from crm_app.extensions import db
    from crm_app.models import RunStatus, SyncRun
    from crm_app.services.sync import run_sync
    from crm_app.services.sync.runs import is_stale

    started = time.monotonic()
    while True:
        run = db.session.get(SyncRun, run_id, populate_existing=True)
        if run is None or run.status not in RunStatus.ACTIVE:
            return
        if is_stale(run):
            db.session.rollback()
            run_sync(run_id, progress=progress)
            continue
        elapsed = max(time.monotonic() - started, 1e-6)
        progress(
            {
                "entity": run.current_entity,
                "pages": run.pages,
                "records": run.records,
                "rate": run.records / elapsed,
                "requests": run.requests,
                "rate_limited": run.rate_limited,
            }
        )
        db.session.rollback()
        time.sleep(1.0)


@group.command("sync")
@click.option("--owner", "owner_name", required=True, help="Owner (tenant) name.")
@click.option(
    "--entity",
    "entities",
    type=click.Choice(ENTITY_CHOICES),
    multiple=True,
    help="What to sync (repeatable); default: what the owner's sync flags switch on.",
)
@click.option("--full", is_flag=True, help="Re-read everything instead of changes since last time.")
@click.option(
    "--async",
    "run_async",
    is_flag=True,
    help="Only queue the run for the Celery workers and print its id.",
)
@with_appcontext
def sync(owner_name: str, entities: tuple[str, ...], full: bool, run_async: bool) -> None:
    """Sync an owner's amoCRM contacts, leads and tasks into the local mirror."""
    from crm_app.extensions import db
    from crm_app.models import Owner, RunStatus, SyncRun
    from crm_app.services.sync import SyncError, run_sync, start_sync

    owner = db.session.scalar(select(Owner).where(Owner.name == owner_name))
    if owner is None:
        raise click.UsageError(f"no owner named {owner_name!r}")
    wanted = list(entities) if entities else None
    try:
        run = start_sync(owner.id, entities=wanted, full=full, trigger="cli", enqueue=run_async)
    except SyncError as exc:
        raise click.ClickException(str(exc)) from exc
    if run_async:
        click.echo(f"queued sync run {run.id} ({run.status})")
        return
    if run.trigger != "cli":
        click.echo(
            f"a sync of {owner_name} is already running (run {run.id}); following it", err=True
        )
    progress = _ProgressLine()
    run_sync(run.id, progress=progress)
    # Not ours to run (a worker holds it): watch it instead.
    _follow(run.id, progress)
    progress.done()
    final = db.session.get(SyncRun, run.id, populate_existing=True)
    if final is None:
        raise click.ClickException(f"sync run {run.id} disappeared")
    counts = ", ".join(f"{e}: {c.get('records', 0)}" for e, c in (final.counts or {}).items())
    elapsed = (
        (final.finished_at - final.started_at).total_seconds()
        if final.finished_at and final.started_at
        else 0.0
    )
    click.echo(
        f"sync run {final.id}: {final.status} in {elapsed:.1f} s; {final.records} records "
        f"({counts or 'none'}), {final.pages} pages, {final.requests} requests"
        + (f", {final.rate_limited} answered 429" if final.rate_limited else "")
    )
    if final.status != RunStatus.SUCCESS:
        click.echo(f"error: {final.error or 'unknown'}", err=True)
        sys.exit(1)
