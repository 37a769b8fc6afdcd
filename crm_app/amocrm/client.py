"""The amoCRM API v4 client: one requests.Session, paced, with 401/429/5xx handling."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, SupportsIndex, SupportsInt

import requests

from crm_app.amocrm.errors import (
    AmoCRMAPIError,
    AmoCRMBlocked,
    AmoCRMNotFound,
    AmoCRMPaymentRequired,
    AmoCRMRateLimited,
    AmoCRMTokenExpired,
    AmoCRMUnavailable,
    AmoCRMValidationError,
)
from crm_app.amocrm.fields import (
    contact_fields,
    get_phones,
    normalize_phone,
    phone_search_query,
)
from crm_app.amocrm.hosts import AmoHosts, origin_of
from crm_app.amocrm.oauth import OAuthClient
from crm_app.amocrm.retry import RetryPolicy
from crm_app.amocrm.throttle import LocalThrottle, Throttle
from crm_app.amocrm.tokens import TokenSet, TokenSource
from crm_app.amocrm.transport import (
    DEFAULT_TIMEOUT,
    DEFAULT_USER_AGENT,
    Timeout,
    decode_problem,
    make_session,
    problem_summary,
    proxies_for,
    url_path,
)

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v4/"
MAX_PAGE_LIMIT = 250
# Per-entity caps below the general 250: events are listed 100 a page
# (https://www.amocrm.ru/developers/content/crm_platform/events-and-notes).
_PAGE_LIMITS = {"events": 100}
MAX_BATCH = 250
MAX_COMPLEX_BATCH = 50
NOTE_ENTITIES = ("leads", "contacts", "companies", "customers")
_ENTITY_PATH_RE = re.compile(r"[a-z_]+(?:/[a-z0-9_]+)*")

# One budget per process when the caller passes no throttle: clients built per request still
# share it. Cross-process pacing needs FileThrottle or RedisThrottle.
_DEFAULT_THROTTLE = LocalThrottle()
DEFAULT_RETRY = RetryPolicy()

Params = list[tuple[str, str]]
# Network failures worth another try for an idempotent call.
_TRANSIENT = (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError)


@dataclass(frozen=True)
class Page:
    """One page of a list: its entities, the raw ``_links.next`` href and its number."""

    items: list[dict[str, Any]]
    next_url: str | None
    page: int

    @property
    def has_next(self) -> bool:
        """True if amoCRM announced another page."""
        return self.next_url is not None


# -- query building -----------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def php_params(prefix: str, value: Any) -> Params:
    """Flatten ``value`` under ``prefix`` the way PHP reads query strings.

    ``{"updated_at": {"from": 1}}`` → ``filter[updated_at][from]=1``; a list of scalars →
    ``filter[id][]=1&filter[id][]=2``; a list of mappings → ``filter[statuses][0][...]``.
    ``None`` values are skipped, booleans become 1/0.
    """
    out: Params = []
    if value is None:
        return out
    if isinstance(value, Mapping):
        for key, sub in value.items():
            out.extend(php_params(f"{prefix}[{key}]", sub))
    elif isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        if all(not isinstance(i, Mapping | list | tuple) for i in items):
            out.extend((f"{prefix}[]", _scalar(i)) for i in items if i is not None)
        else:
            for index, sub in enumerate(items):
                out.extend(php_params(f"{prefix}[{index}]", sub))
    else:
        out.append((prefix, _scalar(value)))
    return out


def _with_value(with_: str | Sequence[str] | None) -> str | None:
    if with_ is None:
        return None
    if isinstance(with_, str):
        return with_ or None
    return ",".join(w for w in with_ if w) or None


def list_params(
    *,
    limit: int | None = None,
    page: int | None = None,
    query: str | None = None,
    filter_: Mapping[str, Any] | None = None,
    order: Mapping[str, str] | None = None,
    with_: str | Sequence[str] | None = None,
    extra: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
) -> Params:
    """Query parameters of a list call (``limit``, ``page``, ``query``, ``filter[..]``, ...)."""
    params: Params = []
    with_text = _with_value(with_)
    if with_text:
        params.append(("with", with_text))
    if limit is not None:
        params.append(("limit", str(int(limit))))
    if page is not None:
        params.append(("page", str(int(page))))
    if query is not None:
        params.append(("query", str(query)))
    if filter_:
        params.extend(php_params("filter", dict(filter_)))
    if order:
        for field, direction in order.items():
            if str(direction).lower() not in ("asc", "desc"):
                raise ValueError("order direction must be 'asc' or 'desc'")
            params.append((f"order[{field}]", str(direction).lower()))
    if extra:
        pairs = extra.items() if isinstance(extra, Mapping) else extra
        for key, value in pairs:
            params.extend(php_params(str(key), value))
    return params


def _entity_path(entity: str) -> str:
    if not isinstance(entity, str) or not _ENTITY_PATH_RE.fullmatch(entity):
        raise ValueError(f"not an amoCRM entity path: {entity!r}")
    return entity


def _entity_id(value: object) -> int:
    # Ids go into URL paths: only positive integers, so nothing like "1/../webhooks" slips in.
    if isinstance(value, bool) or not isinstance(value, str | SupportsInt | SupportsIndex):
        raise ValueError("entity id must be a positive integer")
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise ValueError("entity id must be a positive integer") from exc
    if number <= 0 or str(number) != str(value).strip():
        raise ValueError("entity id must be a positive integer")
    return number


def _embedded(data: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(data, Mapping):
        return []
    embedded = data.get("_embedded")
    if not isinstance(embedded, Mapping):
        return []
    items = embedded.get(key)
    if items is None:
        # Fall back to the only list in _embedded (e.g. an entity path whose key differs).
        lists = [v for v in embedded.values() if isinstance(v, list)]
        items = lists[0] if len(lists) == 1 else []
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _next_href(data: Any) -> str | None:
    try:
        href = data["_links"]["next"]["href"]
    except (KeyError, TypeError):
        return None
    return href if isinstance(href, str) and href else None


def _retry_after(response: requests.Response, problem: Mapping[str, Any] | None) -> float | None:
    # Kommo documents retry_after in the JSON body; a Retry-After header is not documented but
    # costs nothing to honour when a gateway sends one.
    candidates = [problem.get("retry_after") if problem else None]
    candidates.append(response.headers.get("Retry-After"))
    for value in candidates:
        if value is None:
            continue
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            continue
        if seconds >= 0:
            return seconds
    return None


# -- the client ---------------------------------------------------------------------------------


class AmoCRMClient:
    """A thin amoCRM API v4 client for one account. Knows nothing of Flask or the database.

    Error handling:

    * 204 / empty body → ``None``, an empty list, or the end of iteration.
    * 401 → ``tokens.refresh(rejected)`` once and one retry; a second 401 raises
      AmoCRMTokenExpired. Errors raised by the refresh itself (AmoCRMAuthError with ``hint``,
      AmoCRMTokenExpired from a long-lived token) propagate unchanged.
    * 429 → retried as the ``retry`` policy says (``RetryPolicy``: doubling waits, at least the
      server's ``retry_after``). amoCRM rejects a 429 before processing it, so even a POST is
      safe to resend. When the policy gives up, AmoCRMRateLimited carries ``retry_after``.
    * 5xx, timeouts, connection errors → retried (``retry.failure_retries``) only for idempotent
      calls (GET, webhook upsert/delete). A POST that timed out or got a 5xx may already have
      been applied; resending it could create duplicates (amoCRM does no duplicate control), so
      it raises AmoCRMUnavailable. The one exception is a connect timeout: nothing was sent.
    * 403 → AmoCRMBlocked without retry (retrying a block only prolongs it); 402 →
      AmoCRMPaymentRequired; 404 → AmoCRMNotFound; 400 with ``validation-errors`` →
      AmoCRMValidationError; anything else → AmoCRMAPIError.
    * Redirects are never followed: a redirect could carry the Bearer token to another host.

    Every attempt (retries included) first waits on ``throttle.acquire(hosts.throttle_key)``.
    """

    def __init__(
        self,
        hosts: AmoHosts,
        tokens: TokenSource,
        *,
        throttle: Throttle | None = None,
        proxy: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        user_agent: str = DEFAULT_USER_AGENT,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.hosts = hosts
        self.tokens = tokens
        self.throttle: Throttle = throttle if throttle is not None else _DEFAULT_THROTTLE
        self.proxies = proxies_for(proxy)
        self.timeout = timeout
        self.session = make_session(session)
        self.retry = retry
        self.user_agent = user_agent
        self._sleep = sleep
        self._random = random.Random()

    def __repr__(self) -> str:
        return (
            f"AmoCRMClient(account={self.hosts.account_host!r}, origin={self.hosts.api_origin!r})"
        )

    def close(self) -> None:
        """Close the HTTP session."""
        self.session.close()

    def __enter__(self) -> AmoCRMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------------------

    def _url(self, path_or_url: str) -> str:
        if path_or_url.startswith("/"):
            return self.hosts.api_origin + path_or_url
        if not self.hosts.is_same_origin(path_or_url):
            raise AmoCRMAPIError("refusing to send a request outside the account's API origin")
        return path_or_url

    def _headers(self, token: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {token}",
            "User-Agent": self.user_agent,
            "Accept": "application/hal+json, application/problem+json, application/json",
        }

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | Mapping[str, Any] | None = None,
        json: Any = None,
        idempotent: bool | None = None,
    ) -> requests.Response:
        """Send one API call with throttling, token refresh and retries; return the response.

        ``path`` is ``/api/v4/...`` or an absolute URL on the API origin. Raises the errors in
        ``crm_app.amocrm.errors`` for anything but 2xx.
        """
        method = method.upper()
        url = self._url(path)
        if idempotent is None:
            idempotent = method in ("GET", "HEAD")
        token = self.tokens.access_token()
        refreshed = False
        rate_limited = 0
        failures = 0
        while True:
            self.throttle.acquire(self.hosts.throttle_key)
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    json=json,
                    headers=self._headers(token),
                    timeout=self.timeout,
                    proxies=self.proxies,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                failures += 1
                # A dropped connection or a cut-off body may hide an applied write, so only
                # idempotent calls go again; a connect timeout means nothing left this machine.
                retryable = isinstance(exc, requests.ConnectTimeout) or (
                    idempotent and isinstance(exc, _TRANSIENT)
                )
                wait = self.retry.failure_wait(failures) if retryable else None
                if wait is not None:
                    what = f"failed ({type(exc).__name__})"
                    self._back_off(wait, method, url, what, failures, self.retry.failure_retries)
                    continue
                # Only the class name: proxy error texts can contain proxy credentials.
                raise AmoCRMUnavailable(
                    f"{method} {url_path(url)}: no answer from amoCRM ({type(exc).__name__})"
                ) from exc

            status = response.status_code
            if status < 300:
                return response
            if status == 401:
                if refreshed:
                    raise AmoCRMTokenExpired(
                        f"{method} {url_path(url)}: access token rejected after a refresh",
                        status=401,
                        problem=decode_problem(response),
                    )
                refreshed = True
                logger.info("amoCRM %s %s got 401; refreshing the token", method, url_path(url))
                token = self.tokens.refresh(token)
                continue
            if status == 429:
                problem = decode_problem(response)
                retry_after = _retry_after(response, problem)
                rate_limited += 1
                wait = self.retry.rate_limit_wait(rate_limited, retry_after)
                if wait is None:
                    raise AmoCRMRateLimited(
                        f"{method} {url_path(url)}: rate limited by amoCRM (HTTP 429)",
                        problem=problem,
                        retry_after=retry_after,
                    )
                retries = self.retry.rate_limit_retries
                self._back_off(wait, method, url, "got 429", rate_limited, retries)
                continue
            wait = self.retry.failure_wait(failures + 1) if status >= 500 and idempotent else None
            if wait is not None:
                failures += 1
                self._back_off(
                    wait, method, url, f"got {status}", failures, self.retry.failure_retries
                )
                continue
            self._raise_for(method, url, response)

    def _back_off(
        self, wait: float, method: str, url: str, what: str, attempt: int, retries: int
    ) -> None:
        """Sleep `wait` with the policy's jitter, logging which retry this is and why."""
        delay = self.retry.with_jitter(wait, self._random)
        logger.warning(
            "amoCRM %s %s %s; retry %d/%d in %.1f s",
            method,
            url_path(url),
            what,
            attempt,
            retries,
            delay,
        )
        self._sleep(delay)

    def _raise_for(self, method: str, url: str, response: requests.Response) -> None:
        status = response.status_code
        problem = decode_problem(response)
        where = f"{method} {url_path(url)}"
        summary = f"{where} -> HTTP {status}: {problem_summary(problem)}"
        if status == 403:
            raise AmoCRMBlocked(summary, problem=problem, from_gateway=problem is None)
        if status == 402:
            raise AmoCRMPaymentRequired(summary, status=status, problem=problem)
        if status == 404:
            raise AmoCRMNotFound(summary, status=status, problem=problem)
        if status == 400 and problem and "validation-errors" in problem:
            raise AmoCRMValidationError(summary, status=status, problem=problem)
        if status >= 500:
            raise AmoCRMUnavailable(summary, status=status, problem=problem)
        if 300 <= status < 400:
            target = origin_of(response.headers.get("Location", "")) or "an unknown origin"
            raise AmoCRMAPIError(
                f"{where} -> HTTP {status}: redirected to {target}; check the account domain",
                status=status,
            )
        raise AmoCRMAPIError(summary, status=status, problem=problem)

    def _json(self, response: requests.Response) -> Any:
        """Decoded body, or None for 204 and empty bodies."""
        if response.status_code == 204 or not response.content.strip():
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise AmoCRMAPIError(
                f"{response.request.method} {url_path(response.url)}: response is not JSON",
                status=response.status_code,
            ) from exc

    def _get(self, path: str, params: Params | None = None) -> Any:
        return self._json(self.request("GET", path, params=params))

    def _write(self, method: str, path: str, body: Any, *, idempotent: bool = False) -> Any:
        return self._json(self.request(method, path, json=body, idempotent=idempotent))

    # -- lists and pagination -------------------------------------------------------------------

    def _page(self, entity: str, params: Params, page: int) -> Page:
        data = self._get(f"{API_PREFIX}{_entity_path(entity)}", params)
        return self._to_page(entity, data, page)

    @staticmethod
    def _to_page(entity: str, data: Any, page: int) -> Page:
        if data is None:
            return Page([], None, page)
        key = entity.rsplit("/", 1)[-1]
        number = data.get("_page") if isinstance(data, Mapping) else None
        return Page(
            items=_embedded(data, key),
            next_url=_next_href(data),
            page=number if isinstance(number, int) else page,
        )

    def _list(
        self,
        entity: str,
        *,
        limit: int,
        page: int,
        query: str | None = None,
        filter_: Mapping[str, Any] | None = None,
        order: Mapping[str, str] | None = None,
        with_: str | Sequence[str] | None = None,
    ) -> Page:
        params = list_params(
            limit=self._limit(entity, limit),
            page=page,
            query=query,
            filter_=filter_,
            order=order,
            with_=with_,
        )
        return self._page(entity, params, page)

    @staticmethod
    def _limit(entity: str, limit: int) -> int:
        cap = _PAGE_LIMITS.get(entity, MAX_PAGE_LIMIT)
        return max(1, min(int(limit), cap))

    def iter_pages(
        self,
        entity: str,
        limit: int = 250,
        start_page: int = 1,
        params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        *,
        query: str | None = None,
        filter_: Mapping[str, Any] | None = None,
        order: Mapping[str, str] | None = None,
        with_: str | Sequence[str] | None = None,
    ) -> Iterator[Page]:
        """Yield pages of ``/api/v4/{entity}`` until a 204 or a page without ``_links.next``.

        ``params`` are extra query parameters (nested values are flattened PHP-style). A next
        link is followed only on the account's own API origin under ``/api/v4/``; a link
        elsewhere (another host, a shard name) is not followed and the next page number is
        requested from our own origin instead.
        """
        entity = _entity_path(entity)
        base = list_params(
            limit=self._limit(entity, limit),
            query=query,
            filter_=filter_,
            order=order,
            with_=with_,
            extra=params,
        )
        path = f"{API_PREFIX}{entity}"
        page_no = max(1, int(start_page))
        target: str = path
        target_params: Params | None = [*base, ("page", str(page_no))]
        seen: set[str] = set()
        while True:
            data = self._get(target, target_params)
            if data is None:  # 204: past the last page
                return
            page = self._to_page(entity, data, page_no)
            yield page
            link = page.next_url
            if link is None:
                return
            # Always move forward, even if the server's _page is missing or stale.
            page_no = max(page.page, page_no) + 1
            if self.hosts.is_same_origin(link) and url_path(link).startswith(API_PREFIX):
                if link in seen:
                    logger.warning("amoCRM next link repeats a page already read; stopping")
                    return
                seen.add(link)
                target, target_params = link, None
            else:
                logger.warning(
                    "amoCRM next link points at %s, outside the API; requesting page %d instead",
                    origin_of(link) or "an invalid URL",
                    page_no,
                )
                target, target_params = path, [*base, ("page", str(page_no))]

    def _collect(self, entity: str, *, limit: int = 250, **kwargs: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for page in self.iter_pages(entity, limit=limit, **kwargs):
            items.extend(page.items)
        return items

    # -- account ------------------------------------------------------------------------------------

    def get_account(self, with_: str | Sequence[str] | None = None) -> dict[str, Any]:
        """``GET /api/v4/account`` (``with_`` e.g. ``"users_groups,task_types"``)."""
        params = list_params(with_=with_)
        data = self._get(f"{API_PREFIX}account", params or None)
        return data if isinstance(data, dict) else {}

    def get_users(self, with_: str | Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Every user of the account (all pages). Needs an admin grant; otherwise 403."""
        return self._collect("users", with_=with_)

    # -- contacts, leads, tasks -------------------------------------------------------------------

    def get_contacts(
        self,
        limit: int = 250,
        page: int = 1,
        query: str | None = None,
        filter_: Mapping[str, Any] | None = None,
        order: Mapping[str, str] | None = None,
        with_: str | Sequence[str] | None = None,
    ) -> Page:
        """One page of ``GET /api/v4/contacts``; an empty Page on 204."""
        return self._list(
            "contacts",
            limit=limit,
            page=page,
            query=query,
            filter_=filter_,
            order=order,
            with_=with_,
        )

    def get_leads(
        self,
        limit: int = 250,
        page: int = 1,
        query: str | None = None,
        filter_: Mapping[str, Any] | None = None,
        order: Mapping[str, str] | None = None,
        with_: str | Sequence[str] | None = "contacts",
    ) -> Page:
        """One page of ``GET /api/v4/leads``, by default ``with=contacts`` (linked contact ids)."""
        return self._list(
            "leads", limit=limit, page=page, query=query, filter_=filter_, order=order, with_=with_
        )

    def get_tasks(
        self,
        limit: int = 250,
        page: int = 1,
        filter_: Mapping[str, Any] | None = None,
        order: Mapping[str, str] | None = None,
    ) -> Page:
        """One page of ``GET /api/v4/tasks``."""
        return self._list("tasks", limit=limit, page=page, filter_=filter_, order=order)

    def get_notes(
        self,
        entity: str,
        limit: int = 250,
        page: int = 1,
        filter_: Mapping[str, Any] | None = None,
        order: Mapping[str, str] | None = None,
    ) -> Page:
        """One page of ``GET /api/v4/{entity}/notes`` (every note of that entity type)."""
        if entity not in NOTE_ENTITIES:
            raise ValueError(f"entity must be one of {', '.join(NOTE_ENTITIES)}")
        return self._list(f"{entity}/notes", limit=limit, page=page, filter_=filter_, order=order)

    def get_note(self, entity: str, note_id: int) -> dict[str, Any] | None:
        """One note by id (``GET /api/v4/{entity}/notes/{id}``), or None on 204."""
        if entity not in NOTE_ENTITIES:
            raise ValueError(f"entity must be one of {', '.join(NOTE_ENTITIES)}")
        return self._get_one(f"{entity}/notes", note_id, None)

    def _get_one(
        self, entity: str, entity_id: int, with_: str | Sequence[str] | None
    ) -> dict[str, Any] | None:
        params = list_params(with_=with_) or None
        data = self._get(f"{API_PREFIX}{entity}/{_entity_id(entity_id)}", params)
        return data if isinstance(data, dict) else None

    def get_contact(
        self, contact_id: int, with_: str | Sequence[str] | None = None
    ) -> dict[str, Any] | None:
        """One contact, or None when amoCRM answers 204 (no such id)."""
        return self._get_one("contacts", contact_id, with_)

    def get_lead(
        self, lead_id: int, with_: str | Sequence[str] | None = "contacts"
    ) -> dict[str, Any] | None:
        """One lead (``with=contacts`` by default), or None on 204."""
        return self._get_one("leads", lead_id, with_)

    def get_task(self, task_id: int) -> dict[str, Any] | None:
        """One task, or None on 204."""
        return self._get_one("tasks", task_id, None)

    def search_contacts(
        self, query: str, *, limit: int = 250, max_pages: int = 4
    ) -> list[dict[str, Any]]:
        """Contacts whose fields contain ``query`` (amoCRM's fuzzy search); ``[]`` on 204.

        Results are only candidates: amoCRM matches substrings across all fields.
        """
        text = (query or "").strip()
        if not text:
            # An empty query would list every contact of the account.
            raise ValueError("search query must not be empty")
        found: list[dict[str, Any]] = []
        for index, page in enumerate(self.iter_pages("contacts", limit=limit, query=text)):
            found.extend(page.items)
            if index + 1 >= max_pages:
                break
        return found

    def find_contacts_by_phone(
        self, phone: str, default_region: str = "RU"
    ) -> list[dict[str, Any]]:
        """Contacts with a PHONE value equal to ``phone`` after E.164 normalisation."""
        wanted = normalize_phone(phone, default_region)
        query = phone_search_query(phone, default_region)
        if wanted is None or query is None:
            return []
        return [
            contact
            for contact in self.search_contacts(query)
            if any(normalize_phone(p, default_region) == wanted for p in get_phones(contact))
        ]

    # -- pipelines and custom fields -----------------------------------------------------------------

    def get_loss_reasons(self) -> list[dict[str, Any]]:
        """``GET /api/v4/leads/loss_reasons`` (all pages); 404 where the account lacks it."""
        return self._collect("leads/loss_reasons")

    def get_pipelines(self) -> list[dict[str, Any]]:
        """Lead pipelines with ``_embedded.statuses`` (142 won and 143 lost in each)."""
        return _embedded(self._get(f"{API_PREFIX}leads/pipelines"), "pipelines")

    def get_custom_fields(self, entity: str) -> list[dict[str, Any]]:
        """All custom field definitions of ``leads``, ``contacts``, ``companies``, ``customers``."""
        if entity not in NOTE_ENTITIES:
            raise ValueError(f"entity must be one of {', '.join(NOTE_ENTITIES)}")
        return self._collect(f"{entity}/custom_fields", limit=50)

    # -- writes -------------------------------------------------------------------------------------

    @staticmethod
    def _batch(items: Sequence[Mapping[str, Any]], cap: int) -> list[dict[str, Any]]:
        batch = [dict(i) for i in items]
        if not batch or len(batch) > cap:
            raise ValueError(f"send between 1 and {cap} items per request")
        return batch

    def _create(self, entity: str, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        data = self._write("POST", f"{API_PREFIX}{entity}", self._batch(items, MAX_BATCH))
        return _embedded(data, entity)

    def create_contacts(self, contacts: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``POST /api/v4/contacts`` (≤250, ≤50 advised); returns ``[{id, request_id, _links}]``."""
        return self._create("contacts", contacts)

    def create_contact(
        self,
        name: str | None = None,
        *,
        first_name: str | None = None,
        last_name: str | None = None,
        phone: str | Sequence[str] | None = None,
        email: str | Sequence[str] | None = None,
        responsible_user_id: int | None = None,
        custom_fields_values: Sequence[Mapping[str, Any]] = (),
        tags: Sequence[str] = (),
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Create one contact; returns ``{id, request_id, _links}``. No duplicate control."""
        body: dict[str, Any] = {
            k: v
            for k, v in {
                "name": name,
                "first_name": first_name,
                "last_name": last_name,
                "responsible_user_id": responsible_user_id,
                "request_id": request_id,
            }.items()
            if v is not None
        }
        fields = contact_fields(phone, email, custom_fields_values)
        if fields:
            body["custom_fields_values"] = fields
        if tags:
            body["tags_to_add"] = [{"name": t} for t in tags]
        return self._first(self.create_contacts([body]))

    def create_leads(self, leads: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``POST /api/v4/leads`` (≤250); returns ``[{id, request_id, _links}]``."""
        return self._create("leads", leads)

    def create_lead(
        self,
        name: str,
        price: int | None = None,
        pipeline_id: int | None = None,
        status_id: int | None = None,
        contact_id: int | None = None,
        *,
        responsible_user_id: int | None = None,
        custom_fields_values: Sequence[Mapping[str, Any]] = (),
        tags: Sequence[str] = (),
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Create one lead, optionally in a pipeline/status and linked to a contact."""
        body: dict[str, Any] = {"name": name}
        optional = {
            "price": price,
            "pipeline_id": pipeline_id,
            "status_id": status_id,
            "responsible_user_id": responsible_user_id,
            "request_id": request_id,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if contact_id is not None:
            body["_embedded"] = {"contacts": [{"id": _entity_id(contact_id), "is_main": True}]}
        if custom_fields_values:
            body["custom_fields_values"] = [dict(f) for f in custom_fields_values]
        if tags:
            body["tags_to_add"] = [{"name": t} for t in tags]
        return self._first(self.create_leads([body]))

    def create_lead_complex(self, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``POST /api/v4/leads/complex``: leads with new or existing contact/company (≤50).

        Returns amoCRM's plain array ``[{id, contact_id, company_id, request_id: [...], merged}]``.
        """
        data = self._write(
            "POST", f"{API_PREFIX}leads/complex", self._batch(items, MAX_COMPLEX_BATCH)
        )
        return [i for i in data if isinstance(i, dict)] if isinstance(data, list) else []

    def create_tasks(self, tasks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``POST /api/v4/tasks`` (each needs ``text`` and ``complete_till``)."""
        return self._create("tasks", tasks)

    def create_task(
        self,
        text: str,
        complete_till: int,
        *,
        entity_type: str | None = None,
        entity_id: int | None = None,
        task_type_id: int | None = None,
        responsible_user_id: int | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Create one task due at ``complete_till`` (Unix time), optionally on an entity."""
        body: dict[str, Any] = {"text": text, "complete_till": int(complete_till)}
        optional = {
            "entity_type": entity_type,
            "entity_id": _entity_id(entity_id) if entity_id is not None else None,
            "task_type_id": task_type_id,
            "responsible_user_id": responsible_user_id,
            "request_id": request_id,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return self._first(self.create_tasks([body]))

    def _update(self, entity: str, entity_id: int, fields: Mapping[str, Any]) -> dict[str, Any]:
        if not fields:
            raise ValueError("nothing to update")
        data = self._write("PATCH", f"{API_PREFIX}{entity}/{_entity_id(entity_id)}", dict(fields))
        return data if isinstance(data, dict) else {}

    def update_many(self, entity: str, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``PATCH /api/v4/{entity}`` with ``[{id, ...}]`` (≤250); ``[{id, updated_at, ...}]``.

        amoCRM validates the whole batch first: one bad item fails all (400).
        """
        if entity not in ("leads", "contacts", "companies", "tasks"):
            raise ValueError(f"cannot batch-update {entity!r}")
        data = self._write("PATCH", f"{API_PREFIX}{entity}", self._batch(items, MAX_BATCH))
        return _embedded(data, entity)

    def update_lead(self, lead_id: int, fields: Mapping[str, Any]) -> dict[str, Any]:
        """``PATCH /api/v4/leads/{id}``; returns ``{id, updated_at, _links}``."""
        return self._update("leads", lead_id, fields)

    def update_contact(self, contact_id: int, fields: Mapping[str, Any]) -> dict[str, Any]:
        """``PATCH /api/v4/contacts/{id}``."""
        return self._update("contacts", contact_id, fields)

    def update_task(self, task_id: int, fields: Mapping[str, Any]) -> dict[str, Any]:
        """``PATCH /api/v4/tasks/{id}`` (complete: ``{"is_completed": True, "result": {...}}``)."""
        return self._update("tasks", task_id, fields)

    @staticmethod
    def _first(items: list[dict[str, Any]]) -> dict[str, Any]:
        if not items:
            raise AmoCRMAPIError("amoCRM accepted the request but returned no created item")
        return items[0]

    # -- notes and links ------------------------------------------------------------------------------

    def add_notes(self, entity: str, notes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``POST /api/v4/{entity}/notes`` with ``[{entity_id, note_type, params}]``."""
        if entity not in NOTE_ENTITIES:
            raise ValueError(f"entity must be one of {', '.join(NOTE_ENTITIES)}")
        data = self._write("POST", f"{API_PREFIX}{entity}/notes", self._batch(notes, MAX_BATCH))
        return _embedded(data, "notes")

    def add_note(self, entity: str, entity_id: int, text: str) -> dict[str, Any]:
        """Add one plain-text (``common``) note to a lead, contact or company."""
        note = {"entity_id": _entity_id(entity_id), "note_type": "common", "params": {"text": text}}
        return self._first(self.add_notes(entity, [note]))

    def link_entities(
        self, entity: str, entity_id: int, links: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """``POST /api/v4/{entity}/{id}/link`` with ``[{to_entity_id, to_entity_type, metadata}]``."""
        if entity not in NOTE_ENTITIES:
            raise ValueError(f"entity must be one of {', '.join(NOTE_ENTITIES)}")
        path = f"{API_PREFIX}{entity}/{_entity_id(entity_id)}/link"
        return _embedded(self._write("POST", path, self._batch(links, MAX_BATCH)), "links")

    def get_links(
        self, entity: str, entity_id: int, filter_: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """``GET /api/v4/{entity}/{id}/links``; ``[]`` on 204."""
        if entity not in NOTE_ENTITIES:
            raise ValueError(f"entity must be one of {', '.join(NOTE_ENTITIES)}")
        params = list_params(filter_=filter_) or None
        return _embedded(
            self._get(f"{API_PREFIX}{entity}/{_entity_id(entity_id)}/links", params), "links"
        )

    # -- webhooks -----------------------------------------------------------------------------------

    @staticmethod
    def _destination(destination: str) -> str:
        if not isinstance(destination, str) or origin_of(destination) is None:
            raise ValueError("webhook destination must be an absolute http(s) URL")
        if not destination.lower().startswith(("https://", "http://")):
            raise ValueError("webhook destination must be an absolute http(s) URL")
        return destination

    def subscribe_webhook(
        self, destination: str, settings: Sequence[str], sort: int | None = None
    ) -> dict[str, Any]:
        """``POST /api/v4/webhooks``; amoCRM updates an existing hook with the same destination."""
        events = [s for s in settings if isinstance(s, str) and s]
        if not events:
            raise ValueError("settings must list at least one event, e.g. 'add_lead'")
        body: dict[str, Any] = {"destination": self._destination(destination), "settings": events}
        if sort is not None:
            body["sort"] = int(sort)
        # An upsert keyed by destination: resending after a timeout cannot duplicate it.
        data = self._write("POST", f"{API_PREFIX}webhooks", body, idempotent=True)
        return data if isinstance(data, dict) else {}

    def unsubscribe_webhook(self, destination: str) -> bool:
        """``DELETE /api/v4/webhooks``; True if removed, False if amoCRM had no such hook."""
        body = {"destination": self._destination(destination)}
        try:
            self._write("DELETE", f"{API_PREFIX}webhooks", body, idempotent=True)
        except AmoCRMNotFound:
            return False
        return True

    def list_webhooks(self, destination: str | None = None) -> list[dict[str, Any]]:
        """``GET /api/v4/webhooks`` (optionally ``filter[destination]``); ``[]`` on 204."""
        params = list_params(filter_={"destination": destination} if destination else None)
        return _embedded(self._get(f"{API_PREFIX}webhooks", params or None), "webhooks")

    # -- tokens -------------------------------------------------------------------------------------

    def refresh_tokens(self) -> str:
        """Force a refresh through the TokenSource; returns the new access token."""
        return self.tokens.refresh(self.tokens.access_token())


def exchange_code(
    hosts: AmoHosts,
    client_id: str,
    client_secret: str,
    redirect_uri: str,
    code: str,
    *,
    proxy: str | None = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
    session: requests.Session | None = None,
    throttle: Throttle | None = None,
) -> TokenSet:
    """Trade an authorization code for tokens (a one-shot OAuthClient)."""
    oauth = OAuthClient(
        hosts,
        client_id,
        client_secret,
        redirect_uri,
        session=session,
        proxy=proxy,
        timeout=timeout,
        throttle=throttle,
    )
    return oauth.exchange_code(code)
