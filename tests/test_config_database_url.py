"""Where the database URL comes from: DATABASE_URL, else compose's POSTGRES_* parts, else SQLite."""

from __future__ import annotations

import pytest

from crm_app.config import load_config

PARTS = ("POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", *PARTS):
        monkeypatch.delenv(name, raising=False)


def test_parts_build_an_escaped_psycopg_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_HOST", "postgres")
    monkeypatch.setenv("POSTGRES_PASSWORD", "p@ss:w/rd%")
    url = load_config()["SQLALCHEMY_DATABASE_URI"]
    assert url == "postgresql+psycopg://crm:p%40ss%3Aw%2Frd%25@postgres:5432/crm"


def test_database_url_wins_over_the_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_HOST", "postgres")
    monkeypatch.setenv("POSTGRES_PASSWORD", "x")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db.example.com:6432/app")
    url = load_config()["SQLALCHEMY_DATABASE_URI"]
    assert url == "postgresql+psycopg://u:p@db.example.com:6432/app"


def test_without_a_host_it_is_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_PASSWORD", "x")
    assert load_config()["SQLALCHEMY_DATABASE_URI"].startswith("sqlite:///")
