"""`flask telegram ...` commands (filled in by the feature that owns them)."""

import click

group = click.Group("telegram", help="telegram commands.")
