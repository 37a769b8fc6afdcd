"""Business logic: tested directly, called by views, tasks and commands."""
