"""Tests for the amoCRM sandbox, run over real HTTP."""
