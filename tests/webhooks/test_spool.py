"""The webhook spool on its own: durable records, torn tails, the size cap, the sweep's checks."""

from __future__ import annotations

import pytest

from crm_app.models import WebhookDelivery
from crm_app.services.webhooks import spool
from tests.webhooks.conftest import Owner, inbox_rows


@pytest.fixture(autouse=True)
def _empty_spool(app):
    import shutil

    # The background sweeper would race these tests' own sweeps: keep it asleep.
    app.config["WEBHOOK_SPOOL_SWEEP_SECONDS"] = 3600
    shutil.rmtree(spool.folder(app), ignore_errors=True)
    yield
    shutil.rmtree(spool.folder(app), ignore_errors=True)


def _item(owner: Owner, body: bytes, request_id: str = "r-1") -> spool.Spooled:
    from crm_app.services.webhooks.receive import _token_hash

    return spool.Spooled(_token_hash(owner.token), body, request_id)


def test_records_survive_and_a_torn_tail_is_skipped(app, owner: Owner) -> None:
    writer = spool.Spool(app)
    first = owner.body({"leads": {"update": [{"id": "1", "name": "a"}]}})
    writer.append(_item(owner, first))
    writer._rotate()
    path = next(spool.folder(app).glob("*.jsonl"))
    with path.open("ab") as handle:
        handle.write(b'{"t": "half a rec')  # the process died mid-write
    items = list(spool.read_file(path))
    assert [i.body for i in items] == [first]


def test_the_size_cap_refuses_more(app, owner: Owner) -> None:
    app.config["WEBHOOK_SPOOL_MAX_BYTES"] = 10
    writer = spool.Spool(app)
    writer.append(_item(owner, owner.body({"leads": {"update": [{"id": "1"}]}})))
    with pytest.raises(spool.SpoolFull):
        writer.append(_item(owner, owner.body({"leads": {"update": [{"id": "2"}]}})))
    writer._rotate()


def test_sweep_checks_token_and_account_and_dedups(app, owner: Owner) -> None:
    writer = spool.Spool(app)
    good = owner.body({"leads": {"update": [{"id": "7", "name": "x"}]}})
    writer.append(_item(owner, good, "r-1"))
    writer.append(_item(owner, good, "r-2"))  # amoCRM's redelivery of the same bytes
    foreign = spool.Spooled("0" * 64, good, "r-3")  # a token nobody owns
    writer.append(foreign)
    other_account = owner.body({"leads": {"update": [{"id": "8"}]}}).replace(
        str(owner.account_id).encode(), b"999999"
    )
    writer.append(_item(owner, other_account, "r-4"))
    assert writer.sweep() == 0
    assert not list(spool.folder(app).glob("*.jsonl"))
    rows = inbox_rows(owner.id)
    assert [r.body for r in rows] == [good]
    assert isinstance(rows[0], WebhookDelivery) and rows[0].request_id == "r-1"
