"""`flask secrets ...` commands (filled in by the feature that owns them)."""

import click

group = click.Group("secrets", help="secrets commands.")
