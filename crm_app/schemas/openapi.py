"""The one SpecTree instance that validates API requests and assembles /api/openapi.json."""

from __future__ import annotations

import copy
import logging
from typing import Any

from pydantic import ValidationError
from spectree import SecurityScheme, SpecTree
from spectree.models import InType, SecureType, SecuritySchemeData
from werkzeug.exceptions import InternalServerError, UnprocessableEntity

from crm_app.schemas.common import Problem

logger = logging.getLogger(__name__)

API_SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"sessionCookie": []}]
# The bot's read API (/api/crm/people, /api/crm/search): the owner's API key as a Bearer token.
BOT_SECURITY: list[dict[str, list[str]]] = [{"apiKey": []}]
# operationIds whose JSON body may be left out entirely (POST /sync, POST /disconnect).
OPTIONAL_BODY: set[str] = set()

DESCRIPTION = """\
JSON API of the amoCRM integration.

**Authentication.** `POST /auth/token` with `{"username", "password"}` returns a short-lived JWT;
send it as `Authorization: Bearer <token>`. A signed-in browser session works too; a session
request that changes something (PUT/POST) must carry the `X-CSRFToken` header.

**Roles.** Admin acts on any owner (`?owner_id=`), User on their own owner only, Guest may only
read their owner's data (writes answer 403). Another owner's resources answer 404.

**Errors** are `application/problem+json` documents (`title`, `status`, `detail`; a 422 also
lists `errors[]` with `in`, `loc`, `msg`). Request bodies are limited in size (413) and must
be JSON objects (415 for another content type).
"""


class RequestValidationProblem(UnprocessableEntity):
    """A request that does not match its schema; `extra` lands in the problem document."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", [])) or first.get("in", "request")
        super().__init__(description=f"Invalid request: {where}: {first.get('msg', 'invalid')}")
        self.extra = {"errors": errors}


def field_errors(err: ValidationError, where: str) -> list[dict[str, Any]]:
    """Pydantic errors without the submitted values (a secret must never be echoed)."""
    return [
        {"in": where, "loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in err.errors(include_url=False, include_input=False, include_context=False)
    ]


def _before(req: Any, resp: Any, err: Exception | None, instance: Any, adapter: Any) -> None:
    # SpecTree would answer pydantic's raw error list; ours is a problem document instead.
    if isinstance(err, ValidationError):
        where = "query" if str(err.title).endswith("Query") else "body"
        raise RequestValidationProblem(field_errors(err, where))


def _after(req: Any, resp: Any, err: Exception | None, instance: Any, adapter: Any) -> None:
    # A response that breaks its own schema is our bug: log it, answer a bare 500 problem
    # (SpecTree would send pydantic's error list, which quotes the response's values).
    if err is not None:
        problems = field_errors(err, "response") if isinstance(err, ValidationError) else err
        logger.error("response of %s %s breaks its schema: %s", req.method, req.path, problems)
        raise InternalServerError("Internal error; it has been logged.")


spec = SpecTree(
    "flask",
    mode="strict",
    title="amoCRM integration API",
    version="1.0.0",
    description=DESCRIPTION,
    path="api",
    filename="openapi.json",
    # No Swagger/Redoc pages: they load scripts from a CDN, which our CSP forbids.
    page_templates={},
    before=_before,
    after=_after,
    validation_error_status=422,
    validation_error_model=Problem,
    naming_strategy=lambda model: model.__name__,
    nested_naming_strategy=lambda _parent, child: child,
    security_schemes=[
        SecurityScheme(
            name="bearerAuth",
            data=SecuritySchemeData(
                type=SecureType.HTTP,
                scheme="bearer",
                bearer_format="JWT",
                description="A JWT from POST /auth/token.",
            ),
        ),
        SecurityScheme(
            name="apiKey",
            data=SecuritySchemeData(
                type=SecureType.HTTP,
                scheme="bearer",
                bearer_format="crmk_…",
                description="An owner's API key (flask api-keys create); sees that owner only.",
            ),
        ),
        SecurityScheme(
            name="sessionCookie",
            data=SecuritySchemeData(
                type=SecureType.API_KEY,
                field_in=InType.COOKIE,
                name="session",
                description="The browser session after /login; writes need X-CSRFToken.",
            ),
        ),
    ],
)

# The browser OAuth callback belongs to the pages blueprint; it is described here so the
# document lists every route of the feature.
_CALLBACK = {
    "get": {
        "tags": ["browser"],
        "operationId": "oauth_callback",
        "summary": "amoCRM's OAuth redirect (browser only)",
        "description": (
            "amoCRM redirects the browser here after consent with `code`, `state`, `referer` "
            "(and `from_widget` for private integrations). The app checks that `state` is "
            "single-use, unexpired and bound to the signed-in session and owner, that "
            "`referer` is an amoCRM account host, exchanges the code and redirects to "
            "`/admin/crm`. Not for API clients."
        ),
        "parameters": [
            {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
            for n in ("code", "state", "referer", "error")
        ],
        "responses": {
            "302": {"description": "Back to the CRM page with the result shown there."},
            "400": {"description": "Bad or reused state, foreign referer (HTML page)."},
        },
        "security": [{"sessionCookie": []}],
        "x-browser-only": True,
    }
}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the JSON API (needs an app context: it reads the routes)."""
    doc = copy.deepcopy(spec.spec)
    for item in doc["paths"].values():
        for op in item.values():
            for code, response in op.get("responses", {}).items():
                content = response.get("content", {})
                # Error bodies are problem documents, and their media type says so.
                if code.isdigit() and int(code) >= 400 and "application/json" in content:
                    content["application/problem+json"] = content.pop("application/json")
            for param in op.get("parameters", []):
                param["schema"] = _not_null(param.get("schema") or {})
            body = op.get("requestBody")
            if body is not None and op.get("operationId") in OPTIONAL_BODY:
                body["required"] = False
    doc["paths"]["/admin/crm/callback"] = copy.deepcopy(_CALLBACK)
    from crm_app.schemas.people import bot_paths

    doc["paths"].update(bot_paths(doc.setdefault("components", {}).setdefault("schemas", {})))
    doc["paths"] = dict(sorted(doc["paths"].items()))
    doc["tags"] = [
        {"name": "auth", "description": "Tokens for the API."},
        {"name": "connection", "description": "Settings, OAuth, status, account."},
        {"name": "mirror", "description": "Contacts, leads, tasks, pipelines (local copy)."},
        {"name": "sync", "description": "Sync runs, the sync log, statistics."},
        {"name": "bot", "description": "The bot's read API with an API key: people, search."},
        {"name": "browser", "description": "Routes for the browser, listed for completeness."},
    ]
    return doc


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent or a value: `X | None` in the model is just `X` on the wire."""
    options = schema.get("anyOf")
    if not isinstance(options, list) or {"type": "null"} not in options:
        return schema
    rest = [o for o in options if o != {"type": "null"}]
    merged = {k: v for k, v in schema.items() if k != "anyOf"}
    if merged.get("default", ...) is None:
        del merged["default"]
    if len(rest) == 1:
        return {**rest[0], **merged}
    return {**merged, "anyOf": rest}


def schema_type(schema: dict[str, Any]) -> str:
    """A short human-readable type of a JSON schema, for the docs page."""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(schema_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(repr(v) for v in schema["enum"])
    if "const" in schema:
        return repr(schema["const"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {schema_type(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema:
        extra = schema["additionalProperties"]
        return f"object of {schema_type(extra)}" if isinstance(extra, dict) else "object"
    return str(kind)
