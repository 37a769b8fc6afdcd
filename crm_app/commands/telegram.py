"""`flask telegram set-webhook`: point an owner's bot at /webhooks/telegram/<secret>."""

from __future__ import annotations

import json

import click
from flask.cli import with_appcontext

group = click.Group("telegram", help="Telegram bot set-up.")


@group.command("set-webhook")
@click.option("--owner", "owner_name", required=True, help="Owner (tenant) name.")
@click.option(
    "--bot-token",
    required=True,
    envvar="TELEGRAM_BOT_TOKEN",
    help="The bot's token from @BotFather (or env TELEGRAM_BOT_TOKEN); never stored.",
)
@click.option("--dry-run", is_flag=True, help="Print the setWebhook call (secrets hidden) only.")
@with_appcontext
def set_webhook(owner_name: str, bot_token: str, dry_run: bool) -> None:
    """Create the owner's webhook secret and register it with the Bot API (setWebhook)."""
    from crm_app.commands.keys import owner_by_name
    from crm_app.services.inbound import telegram
    from crm_app.services.settings import get_or_create_config

    owner = owner_by_name(owner_name)
    if ":" not in bot_token.strip():
        raise click.UsageError("that does not look like a bot token (expected '<id>:<secret>')")
    setup = telegram.prepare_webhook(bot_token.strip())
    if dry_run:
        click.echo(json.dumps({"method": "POST", **setup.printable()}, indent=2))
        click.echo("dry run: nothing sent, nothing stored", err=True)
        return
    try:
        telegram.call_set_webhook(setup)
    except telegram.TelegramError as exc:
        raise click.ClickException(str(exc)) from None
    cfg = get_or_create_config(owner.id)
    telegram.store_secret(cfg, setup.secret)
    url = setup.body["url"]
    click.echo(f"webhook set for owner {owner.name!r}: {url.rsplit('/', 1)[0]}/<secret>")
