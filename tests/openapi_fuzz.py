"""Schemathesis against the app's OpenAPI document, in-process over WSGI, for the fuzz tests.

Every generated case, valid and invalid, is called and checked: no 5xx, every status
documented, every body matching its schema and media type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _per_request_context(app: Any) -> Callable[..., Any]:
    """Each request in its own app context, as under a real server (fresh `g` and DB session)."""

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        with app.app_context():
            return list(app(environ, start_response))

    return wsgi


def openapi_schema(app: Any, bearer: str, max_examples: int) -> Any:
    """/api/openapi.json of `app`, every call sent with `Authorization: Bearer <bearer>`."""
    config = SchemathesisConfig.from_dict(
        {
            "headers": {"Authorization": f"Bearer {bearer}"},
            "generation": {"max-examples": max_examples, "database": "none"},
        }
    )
    return schemathesis.openapi.from_wsgi(
        "/api/openapi.json", _per_request_context(app), config=config
    )


def fuzz_operation(schema: Any, method: str, path: str, max_examples: int) -> None:
    """Generate valid, then invalid cases of one operation; call and check each."""
    op = schema[path][method]
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        # The pytest plugin of schemathesis 4.32 does not run under pytest 9, so the property
        # test is spelled out with Hypothesis: generate cases, call, check every answer.
        @settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            case.call_and_validate(checks=CHECKS)

        run()
