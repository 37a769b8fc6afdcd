"""How the client reacts to each amoCRM status: 204, 401, 429, 403, 402, 400, 404, 5xx, timeouts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses

from crm_app.amocrm.client import AmoCRMClient
from crm_app.amocrm.errors import (
    AmoCRMAPIError,
    AmoCRMAuthError,
    AmoCRMBlocked,
    AmoCRMNotFound,
    AmoCRMPaymentRequired,
    AmoCRMRateLimited,
    AmoCRMTokenExpired,
    AmoCRMUnavailable,
    AmoCRMValidationError,
)
from crm_app.amocrm.hosts import AmoHosts
from crm_app.amocrm.retry import RetryPolicy
from crm_app.amocrm.throttle import NullThrottle
from crm_app.amocrm.tokens import StaticTokenSource

BASE = "https://demo.amocrm.ru"
CONTACTS = f"{BASE}/api/v4/contacts"
ACCOUNT = f"{BASE}/api/v4/account"
LEADS = f"{BASE}/api/v4/leads"
SECRET_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJhY2NvdW50X2lkIjoxfQ.c2lnbmF0dXJlLXNlY3JldA"

HTML_429 = "<html><head><title>429 Too Many Requests</title></head><body>nginx</body></html>"
HTML_403 = (
    "<html><head><title>403 Forbidden</title></head><body><center>nginx</center></body></html>"
)
PROBLEM_429 = {
    "title": "Too Many Requests",
    "type": "https://httpstatus.es/429",
    "status": 429,
    "detail": "You have sent too many requests in a given amount of time.",
    "retry_after": 2,
}
VALIDATION_400 = {
    "validation-errors": [
        {
            "request_id": "0",
            "errors": [
                {
                    "code": "NotSupportedChoice",
                    "path": "custom_fields_values.0.field_id",
                    "detail": "The value you selected is not a valid choice.",
                }
            ],
        }
    ],
    "title": "Bad Request",
    "type": "https://httpstatus.es/400",
    "status": 400,
    "detail": "Request validation failed",
}
CONTACTS_PAGE = {"_page": 1, "_links": {}, "_embedded": {"contacts": [{"id": 1, "name": "A"}]}}


class FakeTokens:
    """A TokenSource that records refresh calls."""

    def __init__(self, token: str = "old-token", fresh: str = "new-token") -> None:
        self.current = token
        self.fresh = fresh
        self.refreshed_with: list[str] = []

    def access_token(self) -> str:
        return self.current

    def refresh(self, rejected: str) -> str:
        self.refreshed_with.append(rejected)
        self.current = self.fresh
        return self.fresh


class CountingThrottle:
    def __init__(self) -> None:
        self.keys: list[str] = []

    def acquire(self, key: str) -> None:
        self.keys.append(key)


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make_client(sleeps: list[float], tokens: Any = None, **kwargs: Any) -> AmoCRMClient:
    kwargs.setdefault("throttle", NullThrottle())
    return AmoCRMClient(
        AmoHosts("demo"),
        tokens if tokens is not None else StaticTokenSource("static-token"),
        sleep=sleeps.append,
        **kwargs,
    )


def auth_headers(mocked: responses.RequestsMock) -> list[str]:
    return [str(c.request.headers["Authorization"]) for c in mocked.calls]


# -- 204 ------------------------------------------------------------------------------------------


def test_204_on_list_gives_empty_page(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    mocked.get(CONTACTS, status=204)
    page = make_client(sleeps).get_contacts()
    assert page.items == []
    assert page.next_url is None
    assert page.page == 1


def test_204_ends_iteration(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    mocked.get(CONTACTS, status=204)
    assert list(make_client(sleeps).iter_pages("contacts")) == []


def test_204_by_id_gives_none(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    mocked.get(f"{CONTACTS}/5", status=204)
    mocked.get(f"{LEADS}/6", status=204)
    mocked.get(f"{BASE}/api/v4/tasks/7", status=204)
    client = make_client(sleeps)
    assert client.get_contact(5) is None
    assert client.get_lead(6) is None
    assert client.get_task(7) is None


def test_204_on_search_gives_empty_list(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.get(CONTACTS, status=204)
    assert make_client(sleeps).search_contacts("9995551122") == []
    assert "query=9995551122" in mocked.calls[0].request.url


def test_204_on_other_lists(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    mocked.get(f"{LEADS}/1/links", status=204)
    mocked.get(f"{BASE}/api/v4/webhooks", status=204)
    mocked.get(f"{BASE}/api/v4/leads/pipelines", status=204)
    client = make_client(sleeps)
    assert client.get_links("leads", 1) == []
    assert client.list_webhooks() == []
    assert client.get_pipelines() == []


def test_200_with_empty_body_is_treated_as_empty(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.get(f"{CONTACTS}/5", status=200, body="")
    assert make_client(sleeps).get_contact(5) is None


def test_invalid_json_on_success_raises(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.get(ACCOUNT, status=200, body="<html>oops</html>")
    with pytest.raises(AmoCRMAPIError, match="not JSON"):
        make_client(sleeps).get_account()


# -- 401 ------------------------------------------------------------------------------------------


def test_401_refreshes_once_and_retries(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.get(ACCOUNT, status=401, json={"title": "Unauthorized", "status": 401})
    mocked.get(ACCOUNT, status=200, json={"id": 1, "name": "Demo"})
    tokens = FakeTokens()
    account = make_client(sleeps, tokens).get_account()
    assert account["id"] == 1
    assert tokens.refreshed_with == ["old-token"]
    assert auth_headers(mocked) == ["Bearer old-token", "Bearer new-token"]


def test_401_twice_raises_token_expired(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.get(ACCOUNT, status=401, json={"title": "Unauthorized", "status": 401})
    tokens = FakeTokens()
    with pytest.raises(AmoCRMTokenExpired) as info:
        make_client(sleeps, tokens).get_account()
    assert tokens.refreshed_with == ["old-token"]  # exactly one refresh
    assert len(mocked.calls) == 2
    assert info.value.status == 401


def test_401_with_static_token_raises_without_retry(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.get(ACCOUNT, status=401, json={"title": "Unauthorized", "status": 401})
    with pytest.raises(AmoCRMTokenExpired):
        make_client(sleeps).get_account()
    assert len(mocked.calls) == 1


def test_refresh_failure_propagates(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    class Revoked(FakeTokens):
        def refresh(self, rejected: str) -> str:
            raise AmoCRMAuthError("refused", status=401, hint="Token has been revoked")

    mocked.get(ACCOUNT, status=401)
    with pytest.raises(AmoCRMAuthError) as info:
        make_client(sleeps, Revoked()).get_account()
    assert info.value.is_revoked
    assert len(mocked.calls) == 1


# -- 429 ------------------------------------------------------------------------------------------


def test_429_json_honours_retry_after(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    mocked.get(ACCOUNT, status=429, json=PROBLEM_429)
    mocked.get(ACCOUNT, status=200, json={"id": 1})
    assert make_client(sleeps).get_account() == {"id": 1}
    assert len(mocked.calls) == 2
    # max(1.5 × 1, retry_after 2) plus up to 25 % jitter
    assert len(sleeps) == 1 and 2.0 <= sleeps[0] <= 2.5


def test_429_html_backs_off_by_attempt(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    mocked.get(ACCOUNT, status=429, body=HTML_429, content_type="text/html")
    mocked.get(ACCOUNT, status=429, body=HTML_429, content_type="text/html")
    mocked.get(ACCOUNT, status=200, json={"id": 1})
    assert make_client(sleeps).get_account() == {"id": 1}
    assert len(mocked.calls) == 3
    assert 1.5 <= sleeps[0] <= 1.5 * 1.25
    assert 3.0 <= sleeps[1] <= 3.0 * 1.25


def test_429_retry_after_header_is_honoured(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.get(ACCOUNT, status=429, body="slow down", headers={"Retry-After": "4"})
    mocked.get(ACCOUNT, status=200, json={"id": 1})
    make_client(sleeps).get_account()
    assert 4.0 <= sleeps[0] <= 5.0


def test_429_exhausted_raises_rate_limited(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.get(ACCOUNT, status=429, json=PROBLEM_429)
    with pytest.raises(AmoCRMRateLimited) as info:
        make_client(sleeps).get_account()
    assert len(mocked.calls) == 4  # first try + 3 retries
    assert len(sleeps) == 3
    assert info.value.retry_after == 2
    assert info.value.status == 429


def test_429_html_exhausted(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    mocked.get(ACCOUNT, status=429, body=HTML_429, content_type="text/html")
    with pytest.raises(AmoCRMRateLimited) as info:
        make_client(sleeps, retry=RetryPolicy(rate_limit_retries=1)).get_account()
    assert len(mocked.calls) == 2
    assert info.value.retry_after is None
    assert info.value.problem == {}


def test_429_long_retry_after_is_not_slept_on(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.get(ACCOUNT, status=429, json={**PROBLEM_429, "retry_after": 300})
    with pytest.raises(AmoCRMRateLimited) as info:
        make_client(sleeps).get_account()
    assert info.value.retry_after == 300
    assert len(mocked.calls) == 1
    assert sleeps == []


def test_patient_policy_waits_out_long_pauses(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.get(ACCOUNT, status=429, json={**PROBLEM_429, "retry_after": 300})
    mocked.get(ACCOUNT, status=429, json={**PROBLEM_429, "retry_after": 300})
    mocked.get(ACCOUNT, status=200, json={"id": 1})
    patient = RetryPolicy(
        rate_limit_retries=3, max_wait=60.0, wait_out_long_pauses=True, retry_after_from=2
    )
    assert make_client(sleeps, retry=patient).get_account() == {"id": 1}
    # A lone 429 waits 1.5 s; the second in a row retry_after, capped at max_wait (+ ≤ 25 %)
    assert 1.5 <= sleeps[0] <= 1.5 * 1.25 and 60.0 <= sleeps[1] <= 75.0


def test_patient_policy_gives_up_after_its_retries(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.get(ACCOUNT, status=429, json={**PROBLEM_429, "retry_after": 300})
    patient = RetryPolicy(rate_limit_retries=2, max_wait=60.0, wait_out_long_pauses=True)
    with pytest.raises(AmoCRMRateLimited):
        make_client(sleeps, retry=patient).get_account()
    assert len(mocked.calls) == 3 and len(sleeps) == 2


def test_post_is_retried_on_429(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    created = {"_embedded": {"leads": [{"id": 10, "request_id": "0"}]}}
    mocked.post(LEADS, status=429, json=PROBLEM_429)
    mocked.post(LEADS, status=200, json=created)
    assert make_client(sleeps).create_lead("Deal")["id"] == 10
    assert len(mocked.calls) == 2


def test_every_attempt_goes_through_the_throttle(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.get(ACCOUNT, status=429, body=HTML_429)
    mocked.get(ACCOUNT, status=401)
    mocked.get(ACCOUNT, status=200, json={"id": 1})
    throttle = CountingThrottle()
    make_client(sleeps, FakeTokens(), throttle=throttle).get_account()
    assert throttle.keys == ["demo.amocrm.ru"] * 3


# -- 403, 402, 404, 400 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(HTML_403, "text/html"), ("403 Forbidden", "text/plain"), ("", "text/plain")],
)
def test_403_block_raises_at_once(
    mocked: responses.RequestsMock, sleeps: list[float], body: str, content_type: str
) -> None:
    mocked.get(CONTACTS, status=403, body=body, content_type=content_type)
    with pytest.raises(AmoCRMBlocked) as info:
        make_client(sleeps).get_contacts()
    assert len(mocked.calls) == 1
    assert sleeps == []
    assert info.value.from_gateway
    assert info.value.status == 403


def test_403_problem_json(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    body = {"title": "Forbidden", "status": 403, "detail": "Access denied"}
    mocked.get(f"{BASE}/api/v4/users", status=403, json=body)
    with pytest.raises(AmoCRMBlocked) as info:
        make_client(sleeps).get_users()
    assert not info.value.from_gateway
    assert info.value.problem["detail"] == "Access denied"
    assert len(mocked.calls) == 1


def test_402(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    body = {"title": "Payment Required", "status": 402, "detail": "Payment required"}
    mocked.post(LEADS, status=402, json=body)
    with pytest.raises(AmoCRMPaymentRequired) as info:
        make_client(sleeps).create_lead("x")
    assert info.value.status == 402
    assert "Payment required" in str(info.value)


def test_404(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    body = {"title": "Not Found", "status": 404, "detail": "Cannot GET /api/v4/nope"}
    mocked.get(f"{BASE}/api/v4/nope", status=404, json=body)
    with pytest.raises(AmoCRMNotFound):
        list(make_client(sleeps).iter_pages("nope"))


def test_400_validation(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    mocked.post(LEADS, status=400, json=VALIDATION_400)
    with pytest.raises(AmoCRMValidationError) as info:
        make_client(sleeps).create_lead("x", status_id=1)
    assert info.value.errors[0]["errors"][0]["code"] == "NotSupportedChoice"
    assert info.value.status == 400
    assert len(mocked.calls) == 1


def test_400_without_validation_errors_is_plain_api_error(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    body = {"title": "Bad Request", "status": 400, "detail": "Request data can not be empty"}
    mocked.post(LEADS, status=400, json=body)
    with pytest.raises(AmoCRMAPIError) as info:
        make_client(sleeps).create_lead("x")
    assert type(info.value) is AmoCRMAPIError
    assert info.value.detail == "Request data can not be empty"


def test_422(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    mocked.post(LEADS, status=422, json={"title": "Unprocessable Entity", "detail": "Limit 250"})
    with pytest.raises(AmoCRMAPIError) as info:
        make_client(sleeps).create_lead("x")
    assert info.value.status == 422


def test_redirect_is_not_followed(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    mocked.get(ACCOUNT, status=301, headers={"Location": "https://demo.kommo.com/api/v4/account"})
    with pytest.raises(AmoCRMAPIError) as info:
        make_client(sleeps).get_account()
    assert len(mocked.calls) == 1
    assert "https://demo.kommo.com" in str(info.value)


# -- 5xx and network failures -------------------------------------------------------------------------


def test_5xx_on_get_is_retried(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    mocked.get(CONTACTS, status=500, json={"title": "ErrInternalServer", "status": 500})
    mocked.get(CONTACTS, status=502, body="bad gateway")
    mocked.get(CONTACTS, status=200, json=CONTACTS_PAGE)
    assert make_client(sleeps).get_contacts().items == [{"id": 1, "name": "A"}]
    assert len(mocked.calls) == 3
    assert len(sleeps) == 2


def test_5xx_on_get_exhausted(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    mocked.get(CONTACTS, status=503, body="unavailable")
    with pytest.raises(AmoCRMUnavailable) as info:
        make_client(sleeps).get_contacts()
    assert info.value.status == 503
    assert len(mocked.calls) == 3  # first try + failure_retries=2


def test_5xx_on_post_is_not_retried(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    mocked.post(LEADS, status=500, json={"title": "ErrInternalServer", "status": 500})
    with pytest.raises(AmoCRMUnavailable):
        make_client(sleeps).create_lead("x")
    assert len(mocked.calls) == 1
    assert sleeps == []


def test_timeout_on_get_is_retried(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    mocked.get(CONTACTS, body=requests.ReadTimeout("read timed out"))
    mocked.get(CONTACTS, body=requests.ConnectionError("reset"))
    mocked.get(CONTACTS, status=200, json=CONTACTS_PAGE)
    assert len(make_client(sleeps).get_contacts().items) == 1
    assert len(mocked.calls) == 3


def test_timeout_on_get_exhausted(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    mocked.get(CONTACTS, body=requests.ReadTimeout("read timed out"))
    with pytest.raises(AmoCRMUnavailable) as info:
        make_client(sleeps).get_contacts()
    assert info.value.status is None
    assert "ReadTimeout" in str(info.value)
    assert len(mocked.calls) == 3


@pytest.mark.parametrize(
    "failure",
    [requests.ReadTimeout("read timed out"), requests.ConnectionError("connection aborted")],
    ids=["read timeout", "connection reset"],
)
def test_post_that_may_have_arrived_is_not_retried(
    mocked: responses.RequestsMock, sleeps: list[float], failure: requests.RequestException
) -> None:
    mocked.post(LEADS, body=failure)
    with pytest.raises(AmoCRMUnavailable):
        make_client(sleeps).create_lead("x")
    assert len(mocked.calls) == 1


def test_connect_timeout_on_post_is_retried(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    created = {"_embedded": {"leads": [{"id": 10, "request_id": "0"}]}}
    mocked.post(LEADS, body=requests.ConnectTimeout("connect timed out"))
    mocked.post(LEADS, status=200, json=created)
    assert make_client(sleeps).create_lead("x")["id"] == 10
    assert len(mocked.calls) == 2


def test_timeout_is_passed_on_every_call(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.get(ACCOUNT, status=429, body=HTML_429)
    mocked.get(ACCOUNT, status=200, json={"id": 1})
    mocked.post(LEADS, status=200, json={"_embedded": {"leads": [{"id": 1}]}})
    client = make_client(sleeps, timeout=(3, 7))
    client.get_account()
    client.create_lead("x")
    assert [c.request.req_kwargs["timeout"] for c in mocked.calls] == [(3, 7)] * 3  # type: ignore[attr-defined]  # set by responses


# -- secrets --------------------------------------------------------------------------------------------


def test_tokens_never_appear_in_errors(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    echo = {"title": "Bad Request", "status": 400, "detail": f"bad token {SECRET_TOKEN}"}
    mocked.get(ACCOUNT, status=400, json=echo)
    mocked.get(CONTACTS, status=401, json={"detail": f"token {SECRET_TOKEN} expired"})
    client = make_client(sleeps, StaticTokenSource(SECRET_TOKEN))
    with pytest.raises(AmoCRMAPIError) as first:
        client.get_account()
    with pytest.raises(AmoCRMTokenExpired) as second:
        client.get_contacts()
    for exc in (first.value, second.value):
        assert SECRET_TOKEN not in str(exc)
        assert SECRET_TOKEN not in repr(exc)
        assert SECRET_TOKEN not in exc.message
    assert SECRET_TOKEN not in repr(client)
    assert SECRET_TOKEN not in repr(client.tokens)


def test_query_strings_stay_out_of_messages(
    mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.get(CONTACTS, status=500, body="boom")
    with pytest.raises(AmoCRMUnavailable) as info:
        make_client(sleeps, retry=RetryPolicy(failure_retries=0)).search_contacts("+79995551122")
    assert "9995551122" not in str(info.value)
    assert "/api/v4/contacts" in str(info.value)


def test_bearer_header_and_json_body(mocked: responses.RequestsMock, sleeps: list[float]) -> None:
    mocked.post(LEADS, status=200, json={"_embedded": {"leads": [{"id": 1}]}})
    make_client(sleeps, StaticTokenSource("abc")).create_lead("Deal", 100)
    request = mocked.calls[0].request
    assert request.headers["Authorization"] == "Bearer abc"
    assert request.headers["Content-Type"] == "application/json"
    assert isinstance(request.body, str | bytes)
    assert json.loads(request.body) == [{"name": "Deal", "price": 100}]
