"""The Chats API emulation over HTTP: signatures, connect, chats, messages, hooks, CRM links."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests

from crm_app.amocrm import chats_signing
from crm_app.amocrm.chats import ChatsAPIError, ChatsClient
from crm_app.sandbox import SandboxServer
from tests.sandbox.helpers import Api, Factory, Receiver, api_for

CHANNEL = "344a5002-f8ca-454d-af3d-396180102ac7"
SECRET = "f2d7f8704eff95087ed45b23ba99c0b5aac8278e"


@pytest.fixture
def chat_sandbox(make_sandbox: Factory, receiver: Receiver) -> SandboxServer:
    return make_sandbox(
        rate_limit=0,
        chat_channel_id=CHANNEL,
        chat_secret=SECRET,
        chat_hook_url=receiver.url + "/:scope_id",
        chat_hook_timeout=2.0,
    )


@pytest.fixture
def crm(chat_sandbox: SandboxServer) -> Api:
    return api_for(chat_sandbox)


@pytest.fixture
def chats(chat_sandbox: SandboxServer) -> ChatsClient:
    return ChatsClient(chat_sandbox.url, CHANNEL, SECRET)


def amojo_id(crm: Api) -> str:
    return str(crm.get("/api/v4/account?with=amojo_id").json()["amojo_id"])


def incoming(conversation: str, msgid: str, text: str, **user: Any) -> dict[str, Any]:
    now = int(time.time())
    sender = {"id": user.pop("id", "person-1"), "name": user.pop("name", "Иван Петров")}
    if user:
        sender["profile"] = user
    return {"timestamp": now, "msec_timestamp": now * 1000, "msgid": msgid,
            "conversation_id": conversation, "sender": sender,
            "message": {"type": "text", "text": text}}  # fmt: skip


def test_connect_returns_the_documented_scope_id(crm: Api, chats: ChatsClient) -> None:
    account = amojo_id(crm)
    assert chats.connect(account, "Bot") == f"{CHANNEL}_{account}"


def test_bad_signature_unknown_channel_and_stale_date(
    chat_sandbox: SandboxServer, crm: Api
) -> None:
    account = amojo_id(crm)
    with pytest.raises(ChatsAPIError) as caught:
        ChatsClient(chat_sandbox.url, CHANNEL, SECRET[:-1] + "1").connect(account)
    assert caught.value.status == 403
    assert caught.value.error_type == "ORIGIN_INVALID_SIGNATURE"
    with pytest.raises(ChatsAPIError) as caught:
        ChatsClient(chat_sandbox.url, str(uuid.uuid4()), SECRET).connect(account)
    assert (caught.value.status, caught.value.error_type) == (404, "ORIGIN_NOT_REGISTERED")
    # A correct signature over a Date older than 15 minutes is refused too.
    path = f"/v2/origin/custom/{CHANNEL}/connect"
    body = json.dumps({"account_id": account}).encode()
    headers = chats_signing.request_headers(
        SECRET, "POST", path, body, date="Wed, 15 Dec 2021 23:12:55 +0000"
    )
    reply = requests.post(chat_sandbox.url + path, data=body, headers=headers, timeout=5)
    assert reply.status_code == 403
    assert reply.json()["error_type"] == "ORIGIN_INVALID_SIGNATURE"


def test_first_message_creates_contact_and_incoming_lead_once(
    chat_sandbox: SandboxServer, crm: Api, chats: ChatsClient, receiver: Receiver
) -> None:
    crm.post("/api/v4/webhooks", json={"destination": receiver.url + "/account",
                                       "settings": ["add_lead", "add_contact", "add_talk", "add_message"]})  # fmt: skip
    scope = chats.connect(amojo_id(crm))
    sent = chats.send_message(
        scope, incoming("conv-1", "m-1", "Здравствуйте", phone="+7 916 000-11-22")
    )
    assert sent.ref_id == "m-1"
    again = chats.send_message(scope, incoming("conv-1", "m-2", "Вы тут?"))
    assert again.amojo_id != sent.amojo_id
    with pytest.raises(ChatsAPIError) as caught:
        chats.send_message(scope, incoming("conv-1", "m-1", "повтор"))
    assert caught.value.status == 400
    listing = requests.get(chat_sandbox.url + "/_sandbox/chats", timeout=5).json()["chats"]
    assert len(listing) == 1
    chat = listing[0]
    lead = crm.get(f"/api/v4/leads/{chat['lead_id']}?with=contacts").json()
    contact = crm.get(f"/api/v4/contacts/{chat['contact_id']}").json()
    assert lead["_embedded"]["contacts"][0]["id"] == contact["id"]
    pipeline = crm.get(f"/api/v4/leads/pipelines/{lead['pipeline_id']}").json()
    unsorted = [s["id"] for s in pipeline["_embedded"]["statuses"] if s["type"] == 1]
    assert lead["status_id"] in unsorted
    phones = [v["value"] for f in contact["custom_fields_values"] for v in f["values"]]
    assert "+79160001122" in phones
    bodies = [parse_qs(r.body.decode()) for r in receiver.wait(4) if r.path.endswith("/account")]
    keys = {k.split("[")[0] for body in bodies for k in body}
    assert {"unsorted", "talk", "message", "leads", "contacts"} <= keys
    unsorted_body = next(b for b in bodies if "unsorted[add][0][lead_id]" in b)
    assert unsorted_body["unsorted[add][0][lead_id]"] == [str(lead["id"])]
    # Only one contact and one lead were made for the two messages.
    assert len([b for b in bodies if "unsorted[add][0][lead_id]" in b]) == 1


def test_a_chat_linked_to_a_contact_makes_no_incoming_lead(
    chat_sandbox: SandboxServer, crm: Api, chats: ChatsClient
) -> None:
    scope = chats.connect(amojo_id(crm))
    chat = chats.create_chat(scope, "conv-9", {"id": "p-9", "name": "Анна"})
    assert chats.create_chat(scope, "conv-9", {"id": "p-9", "name": "Анна"})["id"] == chat["id"]
    contact_id = crm.get("/api/v4/contacts?limit=1").json()["_embedded"]["contacts"][0]["id"]
    linked = crm.post("/api/v4/contacts/chats", json=[{"contact_id": contact_id,
                                                       "chat_id": chat["id"]}])  # fmt: skip
    assert linked.status_code == 200
    assert linked.json()["_embedded"]["chats"][0]["contact_id"] == contact_id
    found = crm.get(f"/api/v4/contacts/chats?chat_id[]={chat['id']}").json()
    assert found["_embedded"]["chats"][0]["contact_id"] == contact_id
    chats.send_message(scope, incoming("conv-9", "x-1", "hello", id="p-9", name="Анна"))
    view = requests.get(f"{chat_sandbox.url}/_sandbox/chats/{chat['id']}", timeout=5).json()
    assert view["lead_id"] is None and view["contact_id"] == contact_id
    assert (
        crm.post("/api/v4/contacts/chats", json=[{"contact_id": 1, "chat_id": "nope"}]).status_code
        == 400
    )


def test_manager_reply_is_hooked_once_signed_and_never_retried(
    chat_sandbox: SandboxServer, crm: Api, chats: ChatsClient, receiver: Receiver
) -> None:
    scope = chats.connect(amojo_id(crm))
    chats.send_message(scope, incoming("conv-2", "m-1", "Когда доставка?"))
    chat_id = requests.get(chat_sandbox.url + "/_sandbox/chats", timeout=5).json()["chats"][0]["id"]
    receiver.statuses = [500]
    reply = requests.post(f"{chat_sandbox.url}/_sandbox/chats/{chat_id}/reply",
                          json={"text": "Завтра"}, timeout=10)  # fmt: skip
    assert reply.status_code == 201
    assert reply.json()["hook"]["status"] == 500
    # The reply call returns after amojo's one attempt: nothing is queued for a retry.
    hooks = [r for r in receiver.wait(1) if r.path.endswith(scope)]
    assert len(hooks) == 1
    deliveries = requests.get(chat_sandbox.url + "/_sandbox/chat-hooks", timeout=5).json()
    assert [d["status"] for d in deliveries["deliveries"]] == [500]
    hook = hooks[0]
    assert hook.headers["User-Agent"] == "amoCRM amoJo/1.0"
    assert chats_signing.webhook_signature_ok(SECRET, hook.body, hook.headers["X-Signature"])
    body = json.loads(hook.body)
    assert body["message"]["conversation"] == {"id": chat_id, "client_id": "conv-2"}
    assert body["message"]["message"]["text"] == "Завтра"
    amojo_msg = body["message"]["message"]["id"]
    # The integration reports delivery, in either documented body form.
    chats.delivery_status(scope, amojo_msg, 1)
    history = chats.history(scope, chat_id)
    assert [m["message"]["text"] for m in history] == ["Завтра", "Когда доставка?"]
    assert history[0]["delivery_status"] == "delivered"
    chats.delivery_status(scope, amojo_msg, -1, "Telegram: bot was blocked by the user")
    assert chats.history(scope, chat_id)[0]["delivery_error"].startswith("Telegram")
    with pytest.raises(ChatsAPIError) as caught:
        chats.delivery_status(scope, str(uuid.uuid4()), 1)
    assert caught.value.status == 404
    assert chats.history(scope, str(uuid.uuid4())) == []


def test_strict_types_and_disconnect(crm: Api, chats: ChatsClient) -> None:
    account = amojo_id(crm)
    scope = chats.connect(account)
    bad = incoming("conv-3", "m-1", "x")
    bad["timestamp"] = "now"
    with pytest.raises(ChatsAPIError) as caught:
        chats.send_message(scope, bad)
    assert caught.value.status == 400
    picture = incoming("conv-3", "m-2", "x")
    picture["message"] = {"type": "picture", "media": "https://example.org/a.png"}
    with pytest.raises(ChatsAPIError):
        chats.send_message(scope, picture)
    chats.disconnect(account)
    with pytest.raises(ChatsAPIError) as caught:
        chats.send_message(scope, incoming("conv-3", "m-3", "x"))
    assert caught.value.status == 404
