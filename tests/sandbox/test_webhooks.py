"""Webhooks: form-encoded bodies like the documented samples, headers, retries, auto-disable."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
import requests

from crm_app.sandbox import SandboxServer
from crm_app.sandbox.webhooks import encode
from tests.sandbox.helpers import Api, Factory, Receiver, api_for

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "amocrm"
# Key order of the documented lead status example (webhook_leads_status_amocrm.json).
STATUS_SAMPLE_KEYS = [
    "id", "name", "old_status_id", "status_id", "price", "responsible_user_id", "last_modified",
    "modified_user_id", "created_user_id", "date_create", "account_id",
]  # fmt: skip
DATE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


def subscribe(api: Api, url: str, *settings: str) -> dict[str, Any]:
    reply = api.post("/api/v4/webhooks", json={"destination": url, "settings": list(settings)})
    assert reply.status_code == 201
    return dict(reply.json())


def first_lead(api: Api) -> int:
    return int(api.get("/api/v4/leads?limit=1").json()["_embedded"]["leads"][0]["id"])


def hooked_lead(
    make_sandbox: Factory, receiver: Receiver, **options: Any
) -> tuple[SandboxServer, Api, int]:
    """A sandbox on a frozen clock whose lead updates go to `receiver`: (server, api, a lead id)."""
    server = make_sandbox(rate_limit=0, **options)
    server.freeze_clock()
    api = api_for(server)
    subscribe(api, receiver.url, "update_lead")
    return server, api, first_lead(api)


def settled(server: SandboxServer, receiver: Receiver, received: int) -> None:
    """Wait for the `received`-th hit and for the sender to have nothing due."""
    receiver.wait(received)
    assert server.wait_webhooks_idle()


def after(server: SandboxServer, receiver: Receiver, seconds: float, received: int) -> None:
    """Move the frozen clock on, then as `settled`."""
    server.advance_clock(seconds)
    settled(server, receiver, received)


def pairs(body: bytes) -> list[tuple[str, str]]:
    return parse_qsl(body.decode("ascii"), keep_blank_values=True)


def item_keys(decoded: list[tuple[str, str]], prefix: str) -> list[str]:
    """Top-level field names of one item, in order (`leads[status][0][name]` → `name`)."""
    out: list[str] = []
    for key, _value in decoded:
        if key.startswith(prefix):
            name = key[len(prefix) :].split("]")[0].lstrip("[")
            if name not in out:
                out.append(name)
    return out


def is_subsequence(small: list[str], big: list[str]) -> bool:
    walker = iter(big)
    return all(any(x == y for y in walker) for x in small)


def admin(server: SandboxServer, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, f"{server.url}/_sandbox{path}", timeout=5, **kwargs)


def test_php_style_encoding() -> None:
    body = {
        "contacts": {
            "add": [
                {
                    "id": "1",
                    "name": "Контакт",
                    "custom_fields": [{"id": "5", "values": [{"value": "+7 1", "enum": "3"}]}],
                }
            ]
        }
    }
    assert encode(body) == (
        "contacts%5Badd%5D%5B0%5D%5Bid%5D=1"
        "&contacts%5Badd%5D%5B0%5D%5Bname%5D=%D0%9A%D0%BE%D0%BD%D1%82%D0%B0%D0%BA%D1%82"
        "&contacts%5Badd%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bid%5D=5"
        "&contacts%5Badd%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bvalues%5D%5B0%5D%5Bvalue%5D=%2B7+1"
        "&contacts%5Badd%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bvalues%5D%5B0%5D%5Benum%5D=3"
    )


@pytest.mark.parametrize("name", ["webhook_contacts_add_amocrm", "webhook_leads_status_amocrm"])
def test_encoding_reproduces_the_derived_samples(name: str) -> None:
    import json

    structure = json.loads((SAMPLES / f"{name}.json").read_text(encoding="utf-8"))
    expected = (SAMPLES / f"{name}.urlencoded.txt").read_text(encoding="utf-8").strip()
    assert encode(structure) == expected


def test_status_change_through_admin_sends_the_documented_form(
    sandbox: SandboxServer, api: Api, receiver: Receiver
) -> None:
    subscribe(api, receiver.url, "status_lead")
    lead = api.get("/api/v4/leads?limit=1").json()["_embedded"]["leads"][0]
    admin(
        sandbox, "PATCH", f"/leads/{lead['id']}", json={"name": "Сделка с Ёлкой"}
    )  # not subscribed
    changed = admin(sandbox, "PATCH", f"/leads/{lead['id']}", json={"status_id": 142})
    assert changed.status_code == 200
    (hit,) = receiver.wait(1)
    assert sandbox.wait_webhooks_idle()
    assert len(receiver.received) == 1, "only status_lead was subscribed"
    assert hit.method == "POST" and hit.path == "/hook"
    assert hit.headers["User-Agent"] == "amoCRM-Webhooks/3.0"
    assert hit.headers["Content-Type"] == "application/x-www-form-urlencoded"
    uuid.UUID(hit.headers["X-Amocrm-Requestid"])
    raw = hit.body.decode("ascii")
    account = sandbox.account
    assert raw.startswith(
        f"account%5Bsubdomain%5D=demo&account%5Bid%5D={account.id}"
        "&account%5B_links%5D%5Bself%5D=https%3A%2F%2Fdemo.amocrm.ru&leads%5Bstatus%5D%5B0%5D%5Bid%5D="
    )
    assert "%D0%81%D0%BB%D0%BA%D0%BE%D0%B9" in raw  # "Ёлкой", UTF-8 percent-encoded
    decoded = pairs(hit.body)
    fields = dict(decoded)
    assert fields["leads[status][0][id]"] == str(lead["id"])
    assert fields["leads[status][0][status_id]"] == "142"
    assert fields["leads[status][0][old_status_id]"] == str(lead["status_id"])
    assert fields["leads[status][0][pipeline_id]"] == str(lead["pipeline_id"])
    assert fields["leads[status][0][name]"] == "Сделка с Ёлкой"
    assert fields["leads[status][0][account_id]"] == str(account.id)
    keys = item_keys(decoded, "leads[status][0]")
    assert is_subsequence(STATUS_SAMPLE_KEYS, keys), keys
    assert not any(k.startswith("leads[update]") for k, _v in decoded)


def test_values_are_strings_and_custom_fields_are_shaped(
    sandbox: SandboxServer, api: Api, receiver: Receiver
) -> None:
    subscribe(api, receiver.url, "add_contact")
    reply = api.post(
        "/api/v4/contacts",
        json=[
            {
                "name": "Контакт",
                "custom_fields_values": [
                    {
                        "field_code": "PHONE",
                        "values": [{"value": "+76665554433", "enum_code": "WORK"}],
                    },
                    {"field_code": "TELEGRAM_ID", "values": [{"value": "123456789"}]},
                ],
            }
        ],
    )
    contact_id = reply.json()["_embedded"]["contacts"][0]["id"]
    (hit,) = receiver.wait(1)
    fields = dict(pairs(hit.body))
    prefix = "contacts[add][0]"
    assert fields[f"{prefix}[id]"] == str(contact_id)
    assert fields[f"{prefix}[type]"] == "contact"
    assert fields[f"{prefix}[custom_fields][0][name]"] == "Телефон"
    assert fields[f"{prefix}[custom_fields][0][code]"] == "PHONE"
    assert fields[f"{prefix}[custom_fields][0][values][0][value]"] == "+76665554433"
    phone_field = sandbox.account.field_by_code("contacts", "PHONE")
    assert phone_field is not None and phone_field.enums is not None
    assert fields[f"{prefix}[custom_fields][0][values][0][enum]"] == str(phone_field.enums[0].id)
    assert fields[f"{prefix}[custom_fields][1][values][0]"] == "123456789"  # plain values: strings
    assert fields[f"{prefix}[date_create]"].isdigit()


def test_task_webhooks_use_the_singular_key_and_dates(
    sandbox: SandboxServer, api: Api, receiver: Receiver
) -> None:
    subscribe(api, receiver.url, "add_task", "update_task")
    lead_id = first_lead(api)
    created = admin(
        sandbox,
        "POST",
        "/tasks",
        json={
            "text": "Позвонить",
            "complete_till": 1759438740,
            "entity_type": "leads",
            "entity_id": lead_id,
        },
    )
    assert created.status_code == 201
    task_id = created.json()["id"]
    admin(
        sandbox,
        "PATCH",
        f"/tasks/{task_id}",
        json={"is_completed": True, "result": {"text": "Готово"}},
    )
    add, update = receiver.wait(2)
    fields = dict(pairs(add.body))
    assert fields["task[add][0][id]"] == str(task_id)
    assert fields["task[add][0][element_id]"] == str(lead_id)
    assert fields["task[add][0][element_type]"] == "2"
    assert fields["task[add][0][status]"] == "0"
    assert DATE.match(fields["task[add][0][complete_till]"])
    assert fields["task[add][0][complete_till]"] == "2025-10-02 23:59:00"  # Moscow time
    assert fields["task[add][0][complete_before]"] == "1759438740"
    assert DATE.match(fields["task[add][0][date_create]"])
    done = dict(pairs(update.body))
    assert done["task[update][0][status]"] == "1"
    assert done["task[update][0][action_close]"] == "1"
    assert done["task[update][0][result][text]"] == "Готово"


def test_companies_arrive_under_contacts(api: Api, receiver: Receiver) -> None:
    subscribe(api, receiver.url, "add_company")
    item: dict[str, Any] = {
        "name": "Сделка",
        "_embedded": {"companies": [{"name": "ООО «Ромашка»"}]},
    }
    result = api.post("/api/v4/leads/complex", json=[item]).json()[0]
    (hit,) = receiver.wait(1)
    fields = dict(pairs(hit.body))
    assert fields["contacts[add][0][type]"] == "company"
    assert fields["contacts[add][0][id]"] == str(result["company_id"])
    assert fields["contacts[add][0][name]"] == "ООО «Ромашка»"


def test_deletes_carry_status_and_pipeline(
    sandbox: SandboxServer, api: Api, receiver: Receiver
) -> None:
    subscribe(api, receiver.url, "delete_lead")
    lead = api.get("/api/v4/leads?limit=1").json()["_embedded"]["leads"][0]
    assert admin(sandbox, "DELETE", f"/leads/{lead['id']}").status_code == 204
    (hit,) = receiver.wait(1)
    decoded = pairs(hit.body)
    assert [k for k, _v in decoded if k.startswith("leads")] == [
        "leads[delete][0][id]",
        "leads[delete][0][status_id]",
        "leads[delete][0][pipeline_id]",
    ]
    assert api.get(f"/api/v4/leads/{lead['id']}").status_code == 204


def test_admin_create_fires_add(sandbox: SandboxServer, api: Api, receiver: Receiver) -> None:
    subscribe(api, receiver.url, "add_lead")
    created = admin(sandbox, "POST", "/leads", json={"name": "Из интерфейса", "price": 500})
    assert created.status_code == 201
    (hit,) = receiver.wait(1)
    fields = dict(pairs(hit.body))
    assert fields["leads[add][0][id]"] == str(created.json()["id"])
    assert fields["leads[add][0][price]"] == "500"


def test_delivery_never_blocks_the_api(make_sandbox: Factory, receiver: Receiver) -> None:
    server = make_sandbox(rate_limit=0, webhook_timeout=1.0)
    api = api_for(server)
    subscribe(api, receiver.url, "update_lead")
    receiver.delay = 3.0  # the sandbox gives up on the answer after webhook_timeout
    lead_id = first_lead(api)
    assert api.patch(f"/api/v4/leads/{lead_id}", json={"price": 7}).status_code == 200
    # Had the API waited for the delivery, its attempt (a timeout) would be logged by now.
    assert server.deliveries() == []
    (attempt,) = server.wait_for_deliveries(1)
    assert attempt["error"] == "timeout"


def test_retry_ladder(make_sandbox: Factory, receiver: Receiver) -> None:
    server, api, lead_id = hooked_lead(make_sandbox, receiver)
    receiver.default_status = 503
    api.patch(f"/api/v4/leads/{lead_id}", json={"price": 1})
    receiver.wait(1)
    # 5 min, 15 min, 15 min and 1 h after the attempt before: nothing comes a second early.
    for attempt, delay in enumerate([300, 900, 900, 3600], start=2):
        assert server.wait_webhooks_idle()
        server.advance_clock(delay - 1)
        assert server.wait_webhooks_idle()
        assert len(receiver.received) == attempt - 1
        after(server, receiver, 1, attempt)
    server.advance_clock(6 * 3600)
    assert server.wait_webhooks_idle()
    assert len(receiver.received) == 5, "five attempts and no more"
    hits = receiver.received
    assert len({h.headers["X-Amocrm-Requestid"] for h in hits}) == 1
    log = requests.get(f"{server.url}/_sandbox/webhook-deliveries", timeout=5).json()
    assert [e["attempt"] for e in log] == [1, 2, 3, 4, 5]
    assert [e["status_code"] for e in log] == [503] * 5
    assert [e["next_attempt_in"] for e in log] == [300, 900, 900, 3600, None]


def test_time_scale_compresses_the_ladder(make_sandbox: Factory, receiver: Receiver) -> None:
    server, api, lead_id = hooked_lead(make_sandbox, receiver, webhook_time_scale=1 / 60)
    receiver.default_status = 503
    api.patch(f"/api/v4/leads/{lead_id}", json={"price": 1})
    settled(server, receiver, 1)
    server.advance_clock(5)  # 5 minutes at 1/60
    receiver.wait(2)
    assert server.deliveries()[0]["next_attempt_in"] == 5


def test_client_errors_stop_after_the_third_attempt(
    make_sandbox: Factory, receiver: Receiver
) -> None:
    server, api, lead_id = hooked_lead(make_sandbox, receiver)
    receiver.default_status = 404
    api.patch(f"/api/v4/leads/{lead_id}", json={"price": 2})
    settled(server, receiver, 1)
    after(server, receiver, 300, 2)
    after(server, receiver, 900, 3)
    server.advance_clock(6 * 3600)  # a 5xx would be tried a fourth time by now
    assert server.wait_webhooks_idle()
    assert len(receiver.received) == 3
    assert server.deliveries()[-1]["next_attempt"] is None


def test_success_stops_retries_and_timeouts_count_as_failures(
    make_sandbox: Factory, receiver: Receiver
) -> None:
    server, api, lead_id = hooked_lead(make_sandbox, receiver, webhook_timeout=0.3)
    receiver.statuses = [500, 200]
    api.patch(f"/api/v4/leads/{lead_id}", json={"price": 3})
    settled(server, receiver, 1)
    after(server, receiver, 300, 2)
    server.advance_clock(6 * 3600)
    assert server.wait_webhooks_idle()
    assert len(receiver.received) == 2
    receiver.delay = 0.6  # longer than the sandbox waits
    api.patch(f"/api/v4/leads/{lead_id}", json={"price": 4})
    log = server.wait_for_deliveries(3)
    timed_out = [e for e in log if e["error"] == "timeout"]
    assert timed_out and timed_out[0]["status_code"] == 0 and timed_out[0]["next_attempt"] == 2


def test_hook_is_disabled_after_too_many_invalid_answers(
    make_sandbox: Factory, receiver: Receiver
) -> None:
    server, api, lead_id = hooked_lead(make_sandbox, receiver, webhook_disable_threshold=3)
    receiver.default_status = 410
    api.patch(f"/api/v4/leads/{lead_id}", json={"price": 5})
    api.patch(f"/api/v4/leads/{lead_id}", json={"price": 6})
    settled(server, receiver, 2)
    # Both second attempts: four invalid answers within 2 hours.
    after(server, receiver, 300, 4)
    hooks = api.get("/api/v4/webhooks").json()["_embedded"]["webhooks"]
    assert hooks[0]["disabled"] is True
    count = len(receiver.received)
    assert count == 4, "more than 3 invalid answers in the window disable the hook"
    api.patch(f"/api/v4/leads/{lead_id}", json={"price": 7})
    server.advance_clock(6 * 3600)
    assert server.wait_webhooks_idle()
    assert len(receiver.received) == count
    # Saving the hook again re-enables it, as in the UI.
    subscribe(api, receiver.url, "update_lead")
    assert api.get("/api/v4/webhooks").json()["_embedded"]["webhooks"][0]["disabled"] is False
