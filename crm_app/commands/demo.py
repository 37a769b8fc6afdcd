"""`flask demo ...` commands (filled in by the feature that owns them)."""

import click

group = click.Group("demo", help="demo commands.")
