"""Register every command group on the app."""

from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    from crm_app.commands import crm, demo, keys, secrets, telegram, users

    for group in (users.group, keys.group, crm.group, telegram.group, secrets.group, demo.group):
        app.cli.add_command(group)
