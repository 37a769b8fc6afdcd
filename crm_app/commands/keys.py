"""`flask api-keys ...` commands (filled in by the feature that owns them)."""

import click

group = click.Group("api-keys", help="api-keys commands.")
