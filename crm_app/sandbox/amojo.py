"""The Chats API ("amojo") emulation: channels, connections, chats, messages and channel hooks.

Behaviour follows https://www.amocrm.ru/developers/content/chats/chat-api-reference and
chat-step-by-step: a chat is idempotent on ``conversation_id``; a duplicate ``msgid`` is refused;
the first non-silent incoming message of a chat with no contact creates a contact and an
incoming ("unsorted") lead; a manager's reply is POSTed to the channel's hook URL, signed with
HMAC-SHA1 of the body, once, with no retry.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

import requests

from crm_app.amocrm.chats_signing import webhook_signature
from crm_app.sandbox.webhooks import encode

if TYPE_CHECKING:
    from crm_app.sandbox.state import Sandbox
    from crm_app.sandbox.store import Account

HOOK_USER_AGENT = "amoCRM amoJo/1.0"
MESSAGE_TYPES = (
    "text",
    "contact",
    "file",
    "video",
    "picture",
    "voice",
    "audio",
    "sticker",
    "location",
)
MEDIA_TYPES = ("file", "video", "picture")
# Delivery statuses: 0 sent (the default once a message leaves amoCRM), 1 delivered, 2 read, -1 error.
STATUS_NAMES = {0: "sent", 1: "delivered", 2: "read", -1: "error"}


class ChatError(Exception):
    """An amojo error answer: ``{"status":0,"error_code","error_type","error_description"}``."""

    def __init__(self, code: int, error_type: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.body = {
            "status": 0,
            "error_code": code,
            "error_type": error_type,
            "error_description": description,
        }


def bad_request(description: str) -> ChatError:
    # The 400 error_type values are not documented; one generic code is used for all of them.
    return ChatError(400, "ORIGIN_INVALID_REQUEST", description)


@dataclass
class Channel:
    id: str
    secret: str
    hook_url: str = ""  # must contain ":scope_id"
    bot_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    name: str = "sandbox-channel"
    accounts: list[int] | None = None  # None: public (any account may connect)


@dataclass
class Connection:
    scope_id: str
    channel_id: str
    account_id: int
    amojo_account_id: str
    title: str
    hook_api_version: str
    connected_at: float


@dataclass
class Chat:
    id: str  # amojo chat uuid
    scope_id: str
    conversation_id: str  # the integration's id
    client: dict[str, Any]  # amojo user: id, client_id, name, avatar?, phone?, email?
    created_at: int
    contact_id: int | None = None
    lead_id: int | None = None
    talk_id: int | None = None
    source_external_id: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)


class ChatHub:
    """All amojo state of one sandbox, behind one lock."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sb = sandbox
        self.lock = threading.RLock()
        self.channels: dict[str, Channel] = {}
        self.connections: dict[str, Connection] = {}
        self.chats: dict[str, Chat] = {}  # by amojo chat id
        self.by_conversation: dict[tuple[str, str], str] = {}
        self.messages: dict[str, tuple[str, dict[str, Any]]] = {}  # amojo msg id -> (chat, msg)
        self.msgids: dict[tuple[str, str], str] = {}  # (scope, our msgid) -> amojo msg id
        self.hook_log: list[dict[str, Any]] = []
        self.next_talk = 1
        self.post: Callable[..., requests.Response] = _post
        # Fault injection for the Chats API routes: answer this status to every signed call.
        self.fault_status: int | None = None

    # --- channels and connections -------------------------------------------------------
    def register(self, channel: Channel) -> Channel:
        with self.lock:
            self.channels[channel.id] = channel
        return channel

    def channel(self, channel_id: str) -> Channel:
        found = self.channels.get(channel_id)
        if found is None:
            raise ChatError(404, "ORIGIN_NOT_REGISTERED", "NOT_FOUND")
        return found

    def account_for_amojo(self, amojo_id: Any) -> Account | None:
        for account in self.sb.accounts:
            if amojo_account_id(account.id) == amojo_id:
                return account
        return None

    def connect(self, channel: Channel, body: dict[str, Any]) -> dict[str, Any]:
        amojo_id = body.get("account_id")
        if not isinstance(amojo_id, str) or not amojo_id:
            raise bad_request("account_id is required")
        version = body.get("hook_api_version", "v1")
        if version not in ("v1", "v2"):
            raise bad_request("hook_api_version must be v1 or v2")
        title = body.get("title", channel.name)
        if not isinstance(title, str):
            raise bad_request("title must be a string")
        account = self.account_for_amojo(amojo_id)
        if account is None or (channel.accounts is not None and account.id not in channel.accounts):
            # A private channel connects only to the accounts listed at registration.
            raise ChatError(404, "ORIGIN_NOT_REGISTERED", "NOT_FOUND")
        scope = f"{channel.id}_{amojo_id}"
        with self.lock:
            self.connections[scope] = Connection(
                scope, channel.id, account.id, amojo_id, title, version, time.time()
            )
        answer: dict[str, Any] = {
            "account_id": amojo_id,
            "scope_id": scope,
            "title": title,
            "hook_api_version": version,
        }
        if "is_time_window_disabled" in body:
            answer["is_time_window_disabled"] = bool(body["is_time_window_disabled"])
        return answer

    def disconnect(self, channel: Channel, body: dict[str, Any]) -> None:
        amojo_id = body.get("account_id")
        if not isinstance(amojo_id, str) or not amojo_id:
            raise bad_request("account_id is required")
        with self.lock:
            if self.connections.pop(f"{channel.id}_{amojo_id}", None) is None:
                raise ChatError(404, "ORIGIN_NOT_REGISTERED", "NOT_FOUND")

    def connection(self, scope: str) -> Connection:
        found = self.connections.get(scope)
        if found is None:
            raise ChatError(404, "ORIGIN_NOT_REGISTERED", "NOT_FOUND")
        return found

    # --- chats --------------------------------------------------------------------------
    def create_chat(self, conn: Connection, body: dict[str, Any]) -> dict[str, Any]:
        conversation = body.get("conversation_id")
        user = body.get("user")
        if not isinstance(conversation, str) or not conversation:
            raise bad_request("conversation_id is required")
        if not isinstance(user, dict) or not user.get("id") or not user.get("name"):
            raise bad_request("user.id and user.name are required")
        raw_source = body.get("source")
        source = raw_source if isinstance(raw_source, dict) else {}
        with self.lock:
            chat = self._chat_for(conn, conversation, user, source.get("external_id"))
        return {"id": chat.id, "user": dict(chat.client)}

    def _chat_for(
        self, conn: Connection, conversation: str, user: dict[str, Any], source: Any
    ) -> Chat:
        key = (conn.scope_id, conversation)
        existing = self.by_conversation.get(key)
        if existing is not None:
            return self.chats[existing]
        raw_profile = user.get("profile")
        profile = raw_profile if isinstance(raw_profile, dict) else {}
        client: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "client_id": str(user["id"]),
            "name": str(user.get("name", "")),
        }
        if user.get("avatar"):
            client["avatar"] = str(user["avatar"])
        phone = profile.get("phone") or user.get("phone")
        email = profile.get("email") or user.get("email")
        if phone:
            client["phone"] = "".join(ch for ch in str(phone) if ch.isdigit())
        if email:
            client["email"] = str(email)
        chat = Chat(
            id=str(uuid.uuid4()),
            scope_id=conn.scope_id,
            conversation_id=conversation,
            client=client,
            created_at=self.sb.clock.now(),
            source_external_id=str(source) if source else None,
        )
        self.chats[chat.id] = chat
        self.by_conversation[key] = chat.id
        return chat

    def link_contact(self, account: Account, chat_id: str, contact_id: int) -> dict[str, Any]:
        """POST /api/v4/contacts/chats: a chat belongs to at most one contact."""
        with self.lock:
            chat = self.chats.get(chat_id)
            if chat is None or self.connections[chat.scope_id].account_id != account.id:
                raise KeyError(chat_id)
            chat.contact_id = contact_id
            return {"chat_id": chat.id, "contact_id": contact_id, "id": _link_id(chat)}

    def links(self, account: Account) -> list[dict[str, Any]]:
        with self.lock:
            return [
                {"id": _link_id(c), "chat_id": c.id, "contact_id": c.contact_id}
                for c in self.chats.values()
                if c.contact_id is not None
                and self.connections.get(c.scope_id) is not None
                and self.connections[c.scope_id].account_id == account.id
            ]

    # --- messages -----------------------------------------------------------------------
    def new_message(self, conn: Connection, body: dict[str, Any]) -> dict[str, Any]:
        event = body.get("event_type")
        payload = body.get("payload")
        if event not in ("new_message", "edit_message") or not isinstance(payload, dict):
            raise bad_request("event_type must be new_message or edit_message with a payload")
        if event == "edit_message":
            return self._edit(conn, payload)
        msgid = payload.get("msgid")
        conversation = payload.get("conversation_id")
        sender = payload.get("sender")
        message = payload.get("message")
        if not isinstance(msgid, str) or not msgid:
            raise bad_request("payload.msgid is required")
        if not isinstance(conversation, str) or not conversation:
            raise bad_request("payload.conversation_id is required")
        if not isinstance(sender, dict) or not sender.get("id"):
            raise bad_request("payload.sender.id is required")
        message = _check_message(message)
        for key in ("timestamp", "msec_timestamp"):
            if key in payload and not _is_int(payload[key]):
                raise bad_request(f"payload.{key} must be an integer")
        receiver = payload.get("receiver") if isinstance(payload.get("receiver"), dict) else None
        with self.lock:
            if (conn.scope_id, msgid) in self.msgids:
                raise bad_request("message with this msgid already exists")
            incoming = receiver is None
            client = sender if incoming else receiver
            if not client or not client.get("name"):
                raise bad_request("the client's id and name are required")
            raw_source = payload.get("source")
            source = raw_source if isinstance(raw_source, dict) else {}
            chat = self._chat_for(conn, conversation, client, source.get("external_id"))
            stored: dict[str, Any] = {
                "id": str(uuid.uuid4()),
                "client_id": msgid,
                "incoming": incoming,
                "timestamp": int(payload.get("timestamp") or self.sb.clock.now()),
                "msec_timestamp": int(payload.get("msec_timestamp") or self.sb.clock.time() * 1000),
                "sender": dict(sender),
                "receiver": dict(receiver) if receiver else None,
                "message": dict(message),
                "status": 0,
                "error": None,
                "author": "client" if incoming else "integration",
            }
            chat.messages.append(stored)
            self.messages[stored["id"]] = (chat.id, stored)
            self.msgids[(conn.scope_id, msgid)] = stored["id"]
            silent = bool(payload.get("silent"))
            first = incoming and not silent and chat.lead_id is None and chat.contact_id is None
        account = self.sb.account_by_id(conn.account_id)
        if first:
            self._create_unsorted(account, chat, stored)
        elif incoming and not silent:
            self._account_hook(account, "add_message", "message", self._message_item(chat, stored))
        return {
            "new_message": {
                "conversation_id": conversation,
                "sender_id": str(sender["id"]),
                "receiver_id": str(receiver["id"]) if receiver else None,
                "msgid": stored["id"],
                "ref_id": msgid,
            }
        }

    def _edit(self, conn: Connection, payload: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            amojo_id = payload.get("id") or self.msgids.get(
                (conn.scope_id, str(payload.get("msgid")))
            )
            found = self.messages.get(str(amojo_id)) if amojo_id else None
            if found is None:
                raise ChatError(404, "ORIGIN_MESSAGE_NOT_FOUND", "message not found")
            _chat, stored = found
            if isinstance(payload.get("message"), dict):
                _check_message(payload["message"])
                stored["message"] = dict(payload["message"])
        return {"edit_message": {"msgid": stored["id"], "ref_id": stored["client_id"]}}

    def delivery_status(self, conn: Connection, amojo_msgid: str, body: dict[str, Any]) -> None:
        # Both documented body forms are read: {"delivery_status": n} and {"status_code": n}.
        raw = body.get("delivery_status", body.get("status_code"))
        if not _is_int(raw) or int(raw) not in (1, 2, -1):
            raise bad_request("delivery_status must be 1, 2 or -1")
        status = int(raw)
        error_code = body.get("error_code", body.get("error_\u0441ode"))
        if status == -1 and error_code == 905 and not body.get("error"):
            raise bad_request("error is required with error_code 905")
        with self.lock:
            found = self.messages.get(amojo_msgid)
            if found is None or self.chats[found[0]].scope_id != conn.scope_id:
                raise ChatError(404, "ORIGIN_MESSAGE_NOT_FOUND", "message not found")
            stored = found[1]
            stored["status"] = status
            stored["error"] = str(body.get("error") or "") or None if status == -1 else None
            stored.setdefault("status_log", []).append({"status": status, "at": time.time()})

    def history(
        self, conn: Connection, chat_id: str, offset: int, limit: int
    ) -> list[dict[str, Any]]:
        with self.lock:
            chat = self.chats.get(chat_id)
            if chat is None or chat.scope_id != conn.scope_id:
                return []
            newest_first = list(reversed(chat.messages))[offset : offset + limit]
            return [self._history_item(chat, m) for m in newest_first]

    # --- the manager's side -------------------------------------------------------------
    def manager_reply(
        self,
        chat_id: str,
        text: str,
        user_id: int | None = None,
        media: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A manager answers in amoCRM: store it and send the channel hook once."""
        with self.lock:
            chat = self.chats.get(chat_id)
            if chat is None:
                raise KeyError(chat_id)
            conn = self.connections.get(chat.scope_id)
            if conn is None:
                raise ChatError(404, "ORIGIN_NOT_REGISTERED", "the channel is disconnected")
            account = self.sb.account_by_id(conn.account_id)
            user = account.user(user_id) if user_id else account.admin
            if user is None:
                raise bad_request("unknown user")
            body_message: dict[str, Any] = {"type": "text", "text": text}
            if media:
                body_message.update(media)
            stored: dict[str, Any] = {
                "id": str(uuid.uuid4()),
                "client_id": None,
                "incoming": False,
                "timestamp": self.sb.clock.now(),
                "msec_timestamp": int(self.sb.clock.time() * 1000),
                "sender": {"id": user.uuid, "name": user.name},
                "receiver": dict(chat.client),
                "message": body_message,
                "status": 0,
                "error": None,
                "author": "manager",
            }
            chat.messages.append(stored)
            self.messages[stored["id"]] = (chat.id, stored)
            channel = self.channels[conn.channel_id]
        hook = self._channel_hook_body(conn, chat, stored)
        delivery = self.send_hook(channel, conn, hook)
        return {"message": self._history_item(chat, stored), "hook": delivery}

    def send_hook(self, channel: Channel, conn: Connection, body: dict[str, Any]) -> dict[str, Any]:
        """POST once; no retry whatever the answer (the documented amojo behaviour)."""
        raw = json.dumps(body, ensure_ascii=False).encode("utf-8")
        entry: dict[str, Any] = {
            "scope_id": conn.scope_id,
            "url": None,
            "status": None,
            "error": None,
            "at": time.time(),
        }
        if channel.hook_url:
            url = channel.hook_url.replace(":scope_id", conn.scope_id)
            entry["url"] = url
            headers = {
                "Content-Type": "application/json",
                "User-Agent": HOOK_USER_AGENT,
                "X-Signature": webhook_signature(channel.secret, raw),
            }
            try:
                answer = self.post(url, raw, headers, self.sb.config.chat_hook_timeout)
                entry["status"] = answer.status_code
            except requests.RequestException as exc:
                entry["error"] = type(exc).__name__
        else:
            entry["error"] = "no hook URL registered"
        with self.lock:
            self.hook_log.append(entry)
        return entry

    # --- bodies -------------------------------------------------------------------------
    def _channel_hook_body(
        self, conn: Connection, chat: Chat, stored: dict[str, Any]
    ) -> dict[str, Any]:
        client = chat.client
        message = {
            "id": stored["id"],
            "type": stored["message"]["type"],
            "text": stored["message"].get("text", ""),
            "tag": "",
            "media": stored["message"].get("media", ""),
            "thumbnail": stored["message"].get("thumbnail", ""),
            "file_name": stored["message"].get("file_name", ""),
            "file_size": int(stored["message"].get("file_size", 0) or 0),
        }
        return {
            "account_id": conn.amojo_account_id,
            "time": self.sb.clock.now(),
            "message": {
                "receiver": {
                    "id": client["id"],
                    "phone": client.get("phone", ""),
                    "email": client.get("email", ""),
                    "client_id": client["client_id"],
                },
                "sender": {"id": stored["sender"]["id"]},
                "conversation": {"id": chat.id, "client_id": chat.conversation_id},
                "source": {"external_id": chat.source_external_id or ""},
                "timestamp": stored["timestamp"],
                "msec_timestamp": stored["msec_timestamp"],
                "message": message,
            },
        }

    def _history_item(self, chat: Chat, stored: dict[str, Any]) -> dict[str, Any]:
        sender = dict(chat.client) if stored["incoming"] else dict(stored["sender"])
        item: dict[str, Any] = {
            "timestamp": stored["timestamp"],
            "msec_timestamp": stored["msec_timestamp"],
            "sender": sender,
            "message": dict(stored["message"], id=stored["id"], client_id=stored["client_id"]),
            "delivery_status": STATUS_NAMES.get(stored["status"], "sent"),
        }
        if stored.get("error"):
            item["delivery_error"] = stored["error"]
        if not stored["incoming"]:
            item["receiver"] = dict(chat.client)
        return item

    def _message_item(self, chat: Chat, stored: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": stored["id"],
            "chat_id": chat.id,
            "talk_id": str(chat.talk_id or ""),
            "contact_id": str(chat.contact_id or ""),
            "text": str(stored["message"].get("text", "")),
            "created_at": str(stored["timestamp"]),
            "element_type": "2",
            "entity_type": "lead",
            "element_id": str(chat.lead_id or ""),
            "entity_id": str(chat.lead_id or ""),
            "type": "incoming" if stored["incoming"] else "outgoing",
            "author": {"id": chat.client["id"], "type": "external", "name": chat.client["name"]},
            "origin": "custom",
        }

    # --- CRM side effects -----------------------------------------------------------------
    def _create_unsorted(self, account: Account, chat: Chat, stored: dict[str, Any]) -> None:
        """The first incoming message makes a contact and an incoming lead (category chats)."""
        from crm_app.sandbox.writes import Writer

        writer = Writer(self.sb, account, account.admin.id)
        phone_field = account.field_by_code("contacts", "PHONE")
        email_field = account.field_by_code("contacts", "EMAIL")
        with account.lock:
            contact_item: dict[str, Any] = {"name": chat.client["name"]}
            values = []
            if chat.client.get("phone") and phone_field:
                values.append(
                    {
                        "field_id": phone_field.id,
                        "values": [{"value": "+" + chat.client["phone"], "enum_code": "WORK"}],
                    }
                )
            if chat.client.get("email") and email_field:
                values.append(
                    {
                        "field_id": email_field.id,
                        "values": [{"value": chat.client["email"], "enum_code": "WORK"}],
                    }
                )
            if values:
                contact_item["custom_fields_values"] = values
            errs: list[dict[str, Any]] = []
            contact = writer.build("contacts", contact_item, None, errs)
            if errs:  # a profile amoCRM cannot store still gets a contact with the name alone
                contact = writer.build("contacts", {"name": chat.client["name"]}, None, [])
            writer.insert("contacts", contact)
            pipeline = account.main_pipeline
            lead = writer.build(
                "leads",
                {"name": f"Чат: {chat.client['name']}", "pipeline_id": pipeline.id},
                None,
                [],
            )
            lead["status_id"] = pipeline.unsorted_status().id
            lead["contacts"] = ((contact["id"], True),)
            writer.insert("leads", lead)
            with self.lock:
                chat.contact_id = contact["id"]
                chat.lead_id = lead["id"]
                chat.talk_id = self.next_talk
                self.next_talk += 1
        writer.flush()
        created = self.sb.clock.now()
        unsorted = {
            "uid": str(uuid.uuid4()),
            "category": "chats",
            "source_uid": f"amojo:custom:{chat.id}",
            "lead_id": str(lead["id"]),
            "pipeline_id": str(pipeline.id),
            "created_at": str(created),
            "data": {"contacts": [{"id": str(contact["id"])}]},
            "source_data": {
                "origin": {"provider": "amojo", "chat_id": chat.id},
                "client": {"id": chat.client["id"], "name": chat.client["name"]},
                "data": [
                    {
                        "id": stored["id"],
                        "manager": "",
                        "date": str(created),
                        "text": str(stored["message"].get("text", "")),
                    }
                ],
            },
        }
        self._account_hook(account, self.sb.config.chat_unsorted_setting, "unsorted", unsorted)
        talk = {
            "talk_id": str(chat.talk_id),
            "chat_id": chat.id,
            "contact_id": str(contact["id"]),
            "entity_id": str(lead["id"]),
            "entity_type": "lead",
            "created_at": str(created),
        }
        self._account_hook(account, "add_talk", "talk", talk)
        self._account_hook(account, "add_message", "message", self._message_item(chat, stored))
        self.sb.add_event(
            account,
            "incoming_chat_message",
            "lead",
            lead["id"],
            0,
            after=[{"message": {"id": stored["id"]}}],
        )

    def _account_hook(self, account: Account, setting: str, key: str, item: dict[str, Any]) -> None:
        """Send ``{key}[add][0]...`` to the account webhooks subscribed to ``setting``."""
        with account.lock:
            hooks = [
                h
                for h in account.webhooks.values()
                if not h.get("disabled") and setting in h["settings"]
            ]
        for hook in sorted(hooks, key=lambda h: (h["sort"], h["id"])):
            body = {
                "account": {
                    "subdomain": account.subdomain,
                    "id": str(account.id),
                    "_links": {"self": f"https://{account.subdomain}.{self.sb.domain}"},
                },
                key: {"add": [item]},
            }
            self.sb.dispatcher.enqueue(hook, account.id, encode(body), [f"{key}[add]"])


def amojo_account_id(account_id: int) -> str:
    """The account's amojo id, as `GET /api/v4/account?with=amojo_id` gives it."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"amojo:{account_id}"))


def _link_id(chat: Chat) -> int:
    return uuid.UUID(chat.id).int % 10_000_000


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_message(message: Any) -> dict[str, Any]:
    """The Chats API is strictly typed: the documented types and required fields only."""
    if not isinstance(message, dict):
        raise bad_request("payload.message is required")
    kind = message.get("type")
    if kind not in MESSAGE_TYPES:
        raise bad_request("payload.message.type is not supported")
    if kind == "text" and not isinstance(message.get("text"), str):
        raise bad_request("payload.message.text is required for text messages")
    if kind in MEDIA_TYPES:
        if not message.get("media") or not message.get("file_name"):
            raise bad_request("media and file_name are required for files, videos and pictures")
        if not _is_int(message.get("file_size")):
            raise bad_request("payload.message.file_size must be an integer")
    return message


def _post(url: str, raw: bytes, headers: dict[str, str], timeout: float) -> requests.Response:
    with requests.Session() as session:
        session.trust_env = False
        return session.post(url, data=raw, headers=headers, timeout=timeout, allow_redirects=False)
