"""`flask --app wsgi ...` command groups, one module each."""
