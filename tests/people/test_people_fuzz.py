"""Property-based run of the bot's read API (people, search) from the OpenAPI document.

Schemathesis generates valid and invalid queries with an owner's API key and checks that no
answer is a 5xx, every status is documented and every body matches its schema and media type.
"""

from __future__ import annotations

import pytest

from tests.openapi_fuzz import fuzz_operation, openapi_schema
from tests.people.test_people_api import _fill, _owner

MAX_EXAMPLES = 40
OPERATIONS = [("GET", "/api/crm/people"), ("GET", "/api/crm/search")]


@pytest.fixture
def bot_schema(app, make_user):
    app.config["CRM_READ_RATE_LIMIT"] = "100000 per minute"
    owner_id, key = _owner(make_user, "acme")
    _fill(owner_id)
    return openapi_schema(app, key, MAX_EXAMPLES)


def test_bot_operations_are_documented(bot_schema) -> None:
    found = set()
    for result in bot_schema.get_all_operations():
        op = result.ok()
        if "bot" in op.definition.raw.get("tags", []):
            found.add((op.method.upper(), op.path))
            assert op.definition.raw["security"] == [{"apiKey": []}]
    assert found == set(OPERATIONS)


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda o: f"{o[0]} {o[1]}")
def test_bot_operation_conforms_to_the_document(bot_schema, operation) -> None:
    method, path = operation
    fuzz_operation(bot_schema, method, path, MAX_EXAMPLES)
