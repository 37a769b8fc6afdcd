"""Error bodies as amoCRM sends them: problem+json for the API, OAuthProblemJson for tokens."""

from __future__ import annotations

import json
from typing import Any

from flask import Response

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
}
OAUTH_TYPE = "https://developers.amocrm.ru/v3/errors/OAuthProblemJson"
OAUTH_TITLE = "Некорректный запрос"
OAUTH_DETAIL = "В запросе отсутствует ряд параметров или параметры невалидны"


class ApiError(Exception):
    """Raised anywhere in a view; the app turns it into the response it carries."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def dumps(data: Any) -> str:
    # Key order matters for fidelity with the samples, so never sort; UTF-8 like amoCRM.
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def json_response(data: Any, status: int = 200, content_type: str = "application/json") -> Response:
    return Response(dumps(data), status=status, content_type=content_type)


def hal(data: Any, status: int = 200) -> Response:
    return json_response(data, status, "application/hal+json")


def no_content() -> Response:
    """amoCRM answers empty lists, search misses and unknown ids with 204 and no body."""
    return Response(b"", status=204)


def problem(status: int, detail: str, **extra: Any) -> Response:
    body: dict[str, Any] = {
        "title": TITLES.get(status, "Error"),
        "type": f"https://httpstatus.es/{status}",
        "status": status,
        "detail": detail,
    }
    body.update(extra)
    return json_response(body, status, "application/problem+json")


def validation(errors: list[dict[str, Any]]) -> Response:
    """400 with `validation-errors` first, as in the documented sample."""
    body = {
        "validation-errors": errors,
        "title": "Bad Request",
        "type": "https://httpstatus.es/400",
        "status": 400,
        "detail": "Request validation failed",
    }
    return json_response(body, 400, "application/problem+json")


def item_error(request_id: str, code: str, path: str, detail: str) -> dict[str, Any]:
    return {"request_id": request_id, "errors": [{"code": code, "path": path, "detail": detail}]}


def empty_body() -> Response:
    return problem(400, "Request data can not be empty")


def oauth_problem(status: int, hint: str) -> Response:
    body = {
        "hint": hint,
        "title": OAUTH_TITLE,
        "type": OAUTH_TYPE,
        "status": status,
        "detail": OAUTH_DETAIL,
    }
    return json_response(body, status)


def oauth_invalid_client() -> Response:
    """The hint-less 401 seen when client authentication fails."""
    body = {
        "title": "Некорректный клиент",
        "type": OAUTH_TYPE,
        "status": 401,
        "detail": "Авторизация клиента не прошла",
    }
    return json_response(body, 401)


def unauthorized(lang: str = "en") -> Response:
    detail = "Неверный логин или пароль" if lang == "ru" else "Invalid user name or password"
    return problem(401, detail)
