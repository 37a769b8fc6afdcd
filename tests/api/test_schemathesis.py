"""Property-based run of the whole OpenAPI document against the app, in-process over WSGI.

Schemathesis generates valid and invalid requests for every operation of /api/openapi.json and
checks that no answer is a 5xx, that every status is documented, and that every body matches
its schema and media type. Bounded: a few dozen examples per operation.
"""

from __future__ import annotations

import re

import pytest

from tests.api.conftest import World
from tests.openapi_fuzz import fuzz_operation, openapi_schema

MAX_EXAMPLES = 30


@pytest.fixture
def sandbox_url(app, make_sandbox) -> str:
    """amoCRM calls (code exchange, long-lived token probe) go to a local sandbox."""
    server = make_sandbox(contacts=5, leads=5, tasks=5, rate_limit=0)
    app.config["AMOCRM_BASE_URL"] = server.url
    return str(server.url)


def _operations() -> list[tuple[str, str]]:
    """(METHOD, OpenAPI path) of every operation fuzzed; checked against the document below."""
    from tests.api.test_rbac_matrix import CASES

    ops = [(m, re.sub(r"<(?:[^:>]+:)?(\w+)>", r"{\1}", rule)) for m, rule in CASES]
    return sorted([*ops, ("POST", "/auth/token")])


@pytest.fixture
def api_schema(app, world: World, sandbox_url: str):
    return openapi_schema(app, world.tokens["admin"], MAX_EXAMPLES)


def test_every_documented_operation_is_fuzzed(api_schema) -> None:
    documented = set()
    for result in api_schema.get_all_operations():
        op = result.ok()
        if op.definition.raw.get("x-browser-only"):
            continue  # the OAuth callback: an HTML redirect for browsers
        if "bot" in op.definition.raw.get("tags", []):
            continue  # API-key operations: fuzzed with a key in tests/people/test_people_fuzz.py
        documented.add((op.method.upper(), op.path))
    assert documented == set(_operations())


@pytest.mark.parametrize("operation", _operations(), ids=lambda o: f"{o[0]} {o[1]}")
def test_operation_conforms_to_the_document(api_schema, operation) -> None:
    method, path = operation
    fuzz_operation(api_schema, method, path, MAX_EXAMPLES)
