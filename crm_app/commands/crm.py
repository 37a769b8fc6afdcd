"""`flask crm ...` commands (filled in by the feature that owns them)."""

import click

group = click.Group("crm", help="crm commands.")
