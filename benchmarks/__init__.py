"""`make bench`: performance figures against the sandbox, printed as one table."""
