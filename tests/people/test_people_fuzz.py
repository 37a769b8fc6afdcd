"""Property-based run of the bot's read API (people, search) from the OpenAPI document.

Schemathesis generates valid and invalid queries with an owner's API key and checks that no
answer is a 5xx, every status is documented and every body matches its schema and media type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.people.test_people_api import _fill, _owner

MAX_EXAMPLES = 40
OPERATIONS = [("GET", "/api/crm/people"), ("GET", "/api/crm/search")]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _per_request_context(app: Any) -> Callable[..., Any]:
    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        with app.app_context():
            return list(app(environ, start_response))

    return wsgi


@pytest.fixture
def bot_schema(app, make_user):
    app.config["CRM_READ_RATE_LIMIT"] = "100000 per minute"
    owner_id, key = _owner(make_user, "acme")
    _fill(owner_id)
    config = SchemathesisConfig.from_dict(
        {
            "headers": {"Authorization": f"Bearer {key}"},
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
        }
    )
    return schemathesis.openapi.from_wsgi(
        "/api/openapi.json", _per_request_context(app), config=config
    )


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
    op = bot_schema[path][method]
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case) -> None:
            case.call_and_validate(checks=CHECKS)

        run()
