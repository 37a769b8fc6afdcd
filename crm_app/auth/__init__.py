"""Authentication (sessions, JWT) and authorisation (roles and owner scoping)."""
