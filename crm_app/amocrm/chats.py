"""A client for amoCRM's Chats API ("amojo"): channel connect, chats, messages, statuses.

Reference: https://www.amocrm.ru/developers/content/chats/chat-api-reference. Every call is
signed with the channel secret (see ``chats_signing``); no OAuth token is sent. The client knows
nothing of the database: callers pass the channel's id and secret and the account's scope.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import requests

from crm_app.amocrm import chats_signing
from crm_app.amocrm.errors import AmoCRMAPIError, scrub
from crm_app.amocrm.hosts import AmoHosts
from crm_app.amocrm.transport import DEFAULT_TIMEOUT, Timeout, make_session, proxies_for

logger = logging.getLogger(__name__)

BASE_PATH = "/v2/origin/custom"
HISTORY_LIMIT = 50
# Delivery statuses amojo knows: 1 delivered, 2 read, -1 error (with one of the codes below).
DELIVERED, READ, FAILED = 1, 2, -1
ERROR_OTHER = 905


def chats_origin(hosts: AmoHosts) -> str:
    """``https://amojo.{domain}`` (amojo.amocrm.ru, amojo.kommo.com), or the base URL override."""
    return hosts.base_url or f"https://amojo.{hosts.domain}"


def scope_id(channel_id: str, amojo_account_id: str) -> str:
    """The documented scope id: ``{channel_id}_{amojo_account_id}``."""
    return f"{channel_id}_{amojo_account_id}"


class ChatsAPIError(AmoCRMAPIError):
    """A Chats API call failed; ``error_type`` is amojo's code (ORIGIN_INVALID_SIGNATURE, ...)."""

    @property
    def error_type(self) -> str | None:
        value = self.problem.get("error_type")
        return str(value) if value else None

    @property
    def retryable(self) -> bool:
        """No answer, a 429 or a 5xx: the same call may succeed later."""
        return self.status is None or self.status == 429 or self.status >= 500


@dataclass(frozen=True)
class SentMessage:
    """What amojo answered to a new message: its own id and ours (``ref_id``)."""

    amojo_id: str
    ref_id: str | None
    conversation_id: str | None


class ChatsClient:
    """One channel's signed calls against one amojo origin."""

    def __init__(
        self,
        origin: str,
        channel_id: str,
        secret: str,
        *,
        proxy: str | None = None,
        timeout: Timeout = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
    ) -> None:
        self.origin = origin.rstrip("/")
        self.channel_id = channel_id
        self._secret = secret
        self._proxies = proxies_for(proxy)
        self._timeout = timeout
        self._session = make_session(session)

    # --- channel ----------------------------------------------------------------------
    def connect(self, amojo_account_id: str, title: str | None = None) -> str:
        """Connect the account to the channel; returns the ``scope_id``."""
        body: dict[str, Any] = {"account_id": amojo_account_id, "hook_api_version": "v2"}
        if title:
            body["title"] = title
        answer = self._call("POST", f"{BASE_PATH}/{self.channel_id}/connect", body)
        scope = answer.get("scope_id") if isinstance(answer, dict) else None
        return str(scope) if scope else scope_id(self.channel_id, amojo_account_id)

    def disconnect(self, amojo_account_id: str) -> None:
        self._call(
            "DELETE", f"{BASE_PATH}/{self.channel_id}/disconnect", {"account_id": amojo_account_id}
        )

    # --- chats and messages -----------------------------------------------------------
    def create_chat(
        self,
        scope: str,
        conversation_id: str,
        user: dict[str, Any],
        source_external_id: str | None = None,
    ) -> dict[str, Any]:
        """Create (or find: idempotent on ``conversation_id``) a chat; no contact is made."""
        body: dict[str, Any] = {"conversation_id": conversation_id, "user": user}
        if source_external_id:
            body["source"] = {"external_id": source_external_id}
        answer = self._call("POST", f"{BASE_PATH}/{scope}/chats", body)
        return answer if isinstance(answer, dict) else {}

    def send_message(self, scope: str, payload: dict[str, Any]) -> SentMessage:
        """Post one ``new_message`` (incoming from the client or outgoing from a manager)."""
        answer = self._call(
            "POST", f"{BASE_PATH}/{scope}", {"event_type": "new_message", "payload": payload}
        )
        block = answer.get("new_message") if isinstance(answer, dict) else None
        if not isinstance(block, dict) or not block.get("msgid"):
            raise ChatsAPIError("amojo answered a new message without its id", status=200)
        conversation = block.get("conversation_id")
        return SentMessage(
            amojo_id=str(block["msgid"]),
            ref_id=str(block["ref_id"]) if block.get("ref_id") else None,
            conversation_id=str(conversation) if conversation else None,
        )

    def delivery_status(
        self, scope: str, amojo_msgid: str, status: int, error: str | None = None
    ) -> None:
        """Report delivered (1), read (2) or failed (-1 with a reason shown to the manager)."""
        body: dict[str, Any] = {"msgid": amojo_msgid, "delivery_status": status}
        if status == FAILED:
            body["error_code"] = ERROR_OTHER
            body["error"] = (error or "not delivered")[:500]
        self._call("POST", f"{BASE_PATH}/{scope}/{amojo_msgid}/delivery_status", body)

    def history(
        self, scope: str, chat_ref_id: str, offset: int = 0, limit: int = HISTORY_LIMIT
    ) -> list[dict[str, Any]]:
        """A page of a chat's messages (the documented order is newest first); [] on 204."""
        path = f"{BASE_PATH}/{scope}/chats/{chat_ref_id}/history"
        query = f"?offset={max(0, offset)}&limit={min(max(1, limit), HISTORY_LIMIT)}"
        answer = self._call("GET", path, None, query=query)
        messages = answer.get("messages") if isinstance(answer, dict) else None
        return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []

    # --- transport --------------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict[str, Any] | None, query: str = "") -> Any:
        raw = b"" if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = chats_signing.request_headers(self._secret, method, path, raw)
        try:
            response = self._session.request(
                method,
                self.origin + path + query,
                data=raw if body is not None else None,
                headers=headers,
                proxies=self._proxies,
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise ChatsAPIError(
                f"Chats API {method} unreachable: {type(exc).__name__}", secrets=[self._secret]
            ) from None
        if response.status_code == 204 or not response.content:
            if response.status_code >= 400:
                raise ChatsAPIError(
                    f"Chats API {method} {response.status_code}", status=response.status_code
                )
            return None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code >= 400:
            problem = data if isinstance(data, dict) else None
            kind = (problem or {}).get("error_type") or "non-JSON body"
            raise ChatsAPIError(
                scrub(f"Chats API {method} {response.status_code}: {kind}", [self._secret]),
                status=response.status_code,
                problem=problem,
            )
        return data
