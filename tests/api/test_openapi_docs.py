"""The OpenAPI document and the server-rendered docs page built from the same schemas."""

from __future__ import annotations

import re

from tests.api.test_rbac_matrix import CASES


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:>]+:)?(\w+)>", r"{\1}", rule)


def test_document_lists_every_route_with_schemas(client) -> None:
    resp = client.get("/api/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    doc = resp.json
    assert doc["openapi"].startswith("3.1")
    for method, rule in CASES:
        op = doc["paths"][_openapi_path(rule)][method.lower()]
        assert op["security"] == [{"bearerAuth": []}, {"sessionCookie": []}]
        ok = next(code for code in op["responses"] if code.startswith("2"))
        assert "$ref" in op["responses"][ok]["content"]["application/json"]["schema"]
        for code in ("401", "404", "422"):
            assert "application/problem+json" in op["responses"][code]["content"], (rule, code)
    assert doc["paths"]["/auth/token"]["post"]["security"] == []
    assert doc["paths"]["/admin/crm/callback"]["get"]["x-browser-only"] is True
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A JWT from POST /auth/token.",
    }
    update = doc["components"]["schemas"]["ConfigUpdate"]
    assert update["additionalProperties"] is False
    assert "owner_id" not in update["properties"] and "role" not in update["properties"]
    # Optional bodies say so; a PUT body is required.
    assert doc["paths"]["/admin/crm/sync"]["post"]["requestBody"]["required"] is False
    assert doc["paths"]["/admin/crm/config"]["put"]["requestBody"]["required"] is True


def test_document_needs_no_sign_in_and_holds_no_secret(client, world) -> None:
    text = client.get("/api/openapi.json").get_data(as_text=True)
    assert "secret-acme-value" not in text and world.tokens["admin"] not in text


def test_docs_page_lists_operations_and_schemas_without_scripts(client) -> None:
    resp = client.get("/api/docs")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    for method, rule in CASES:
        assert f"{method} {_openapi_path(rule)}" in html
    assert 'id="schema-ConfigUpdate"' in html and 'id="schema-Problem"' in html
    # Served from our own origin only: no CDN script or stylesheet, nothing inline to run.
    assert not re.search(r"<script(?![^>]*\bsrc=\"/)", html)
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
