"""The Chats API signing rule against the documentation's own signed requests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crm_app.amocrm import chats_signing as sig

VECTORS = json.loads(
    (Path(__file__).parent.parent / "fixtures/amocrm/amojo_signature_test_vectors.json").read_text(
        encoding="utf-8"
    )
)
SECRET = VECTORS["channel_secret"]
DOCUMENTED = [v for v in VECTORS["request_vectors"] if v["verified_against_docs"]]


def test_seven_documented_requests_are_there() -> None:
    assert len(DOCUMENTED) == 7


@pytest.mark.parametrize("vector", VECTORS["request_vectors"], ids=lambda v: v["name"])
def test_request_headers_reproduce_the_documented_signature(vector: dict) -> None:
    body = vector["body_exact_bytes"].encode("utf-8") if vector.get("body_exact_bytes") else b""
    headers = sig.request_headers(
        SECRET, vector["method"], vector["path"], body, date=vector["headers"]["Date"]
    )
    assert headers == vector["headers"]
    assert sig.request_signature_ok(SECRET, vector["method"], vector["path"], headers, body)


@pytest.mark.parametrize("vector", DOCUMENTED, ids=lambda v: v["name"])
def test_a_changed_byte_path_or_secret_is_refused(vector: dict) -> None:
    body = vector["body_exact_bytes"].encode("utf-8")
    headers = dict(vector["headers"])
    method, path = vector["method"], vector["path"]
    assert not sig.request_signature_ok(SECRET, method, path, headers, body + b" ")
    assert not sig.request_signature_ok(SECRET, method, path + "x", headers, body)
    assert not sig.request_signature_ok(SECRET[:-1] + "0", method, path, headers, body)
    # The path alone without the /v2/origin/custom/ prefix is a known wrong client.
    short = path.removeprefix("/v2/origin/custom/")
    wrong = sig.request_headers(SECRET, method, short, body, date=headers["Date"])
    assert wrong["X-Signature"] != headers["X-Signature"]


def test_query_string_is_not_signed() -> None:
    vector = VECTORS["request_vectors"][-1]
    headers = sig.request_headers(
        SECRET, "GET", vector["path"] + "?offset=0&limit=50", b"", date=vector["headers"]["Date"]
    )
    assert headers["X-Signature"] == vector["headers"]["X-Signature"]


def test_webhook_signature_over_the_raw_body() -> None:
    hook = VECTORS["webhook_vector_DERIVED"]
    body = hook["body_exact_bytes"].encode("utf-8")
    assert sig.webhook_signature(SECRET, body) == hook["X-Signature"]
    assert sig.webhook_signature_ok(SECRET, body, hook["X-Signature"])
    assert sig.webhook_signature_ok(SECRET, body + b"\n", hook["X-Signature"])  # trimmed fallback
    assert not sig.webhook_signature_ok(SECRET, body.replace(b"hi", b"ho"), hook["X-Signature"])
    assert not sig.webhook_signature_ok(SECRET, body, None)
    assert not sig.webhook_signature_ok(SECRET, body, "")
    assert not sig.webhook_signature_ok("", body, hook["X-Signature"])


def test_date_freshness_is_fifteen_minutes_either_way() -> None:
    date = "Thu, 16 Dec 2021 13:15:29 +0000"
    sent = 1639660529
    assert sig.date_fresh(date, sent + 15 * 60)
    assert sig.date_fresh(date, sent - 15 * 60)
    assert not sig.date_fresh(date, sent + 15 * 60 + 1)
    assert not sig.date_fresh("not a date", sent)


def test_rfc2822_dates_parse_back() -> None:
    date = sig.rfc2822()
    assert date.endswith("+0000")
    import time

    assert sig.date_fresh(date, time.time())
