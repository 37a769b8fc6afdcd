"""Settings input: validation, the kept secret, privileged fields ignored, pipeline/status checks."""

from __future__ import annotations

import pytest

from crm_app.extensions import db
from crm_app.models import AmoConfig, ConnectionStatus, Pipeline, PipelineStatus
from crm_app.services import connection, settings
from crm_app.services.settings import ConfigInvalid


def _owner_id(make_user) -> int:
    return make_user("ivan", role="user", owner="acme").owner_id


def test_pasted_account_address_sets_subdomain_and_domain() -> None:
    data = settings.parse_config({"subdomain": "https://MyCompany.kommo.com/leads/"})
    assert (data.subdomain, data.domain) == ("mycompany", "kommo.com")
    data = settings.parse_config({"subdomain": "shop.amocrm.ru", "domain": "kommo.com"})
    assert (data.subdomain, data.domain) == ("shop", "amocrm.ru")
    assert settings.parse_config({"subdomain": "plain"}).domain == "amocrm.ru"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"subdomain": ""}, "subdomain"),
        ({"subdomain": "bad host"}, "subdomain"),
        ({"subdomain": "evil.com@x"}, "subdomain"),
        ({"subdomain": "www"}, "subdomain"),
        ({"subdomain": "x.example.com"}, "subdomain"),
        ({"subdomain": "ok", "domain": "example.com"}, "domain"),
        ({"subdomain": "ok", "redirect_uri": "ftp://host/cb"}, "redirect_uri"),
        ({"subdomain": "ok", "redirect_uri": "https://u:p@host/cb"}, "redirect_uri"),
        ({"subdomain": "ok", "client_id": "has space"}, "client_id"),
        ({"subdomain": "ok", "lead_pipeline_id": "abc"}, "lead_pipeline_id"),
        ({"subdomain": "ok", "lead_status_id": "-5"}, "lead_status_id"),
    ],
)
def test_bad_input_names_the_field(data: dict, field: str) -> None:
    with pytest.raises(ConfigInvalid) as info:
        settings.parse_config(data)
    assert field in info.value.errors, info.value.errors


def test_privileged_fields_are_ignored(app, make_user) -> None:
    owner_id = _owner_id(make_user)
    other = make_user("eve", role="user", owner="other").owner_id
    data = settings.parse_config(
        {
            "subdomain": "acme",
            "owner_id": other,
            "role": "admin",
            "status": "connected",
            "access_token": "x",
            "account_id": 42,
            "webhook_token": "y",
        }
    )
    cfg = settings.update_config(owner_id, data)
    assert cfg.owner_id == owner_id
    assert cfg.status == ConnectionStatus.DISCONNECTED
    assert cfg.account_id is None and cfg.webhook_token is None
    assert db.session.query(AmoConfig).filter_by(owner_id=other).count() == 0


def test_empty_secret_keeps_the_stored_one_and_redirect_defaults(app, make_user) -> None:
    owner_id = _owner_id(make_user)
    settings.update_config(
        owner_id, settings.parse_config({"subdomain": "acme", "client_secret": "s3cret-1"})
    )
    cfg = settings.update_config(
        owner_id, settings.parse_config({"subdomain": "acme", "client_secret": "  "})
    )
    assert cfg.client_secret == "s3cret-1"
    assert cfg.redirect_uri == app.config["PUBLIC_URL"] + "/admin/crm/callback"
    assert settings.config_values(cfg)["client_secret_set"] is True
    assert "s3cret-1" not in repr(settings.config_values(cfg))


def test_status_must_belong_to_the_pipeline(app, make_user) -> None:
    owner_id = _owner_id(make_user)
    db.session.add_all(
        [
            Pipeline(owner_id=owner_id, id=10, name="Main", is_main=True),
            Pipeline(owner_id=owner_id, id=20, name="Second"),
            PipelineStatus(owner_id=owner_id, pipeline_id=10, id=101, name="New", sort=10),
            PipelineStatus(owner_id=owner_id, pipeline_id=10, id=100, name="Unsorted", type=1),
            PipelineStatus(owner_id=owner_id, pipeline_id=20, id=201, name="Other", sort=10),
        ]
    )
    db.session.commit()

    def save(**ids: int):
        return settings.update_config(owner_id, settings.parse_config({"subdomain": "acme", **ids}))

    with pytest.raises(ConfigInvalid) as info:
        save(lead_pipeline_id=10, lead_status_id=201)
    assert "lead_status_id" in info.value.errors
    with pytest.raises(ConfigInvalid) as info:
        save(lead_pipeline_id=99)
    assert "lead_pipeline_id" in info.value.errors
    with pytest.raises(ConfigInvalid) as info:
        save(lead_status_id=101)
    assert "lead_pipeline_id" in info.value.errors
    with pytest.raises(ConfigInvalid) as info:
        save(lead_pipeline_id=10, lead_status_id=100)  # "Неразобранное" takes no API leads
    assert "lead_status_id" in info.value.errors
    cfg = save(lead_pipeline_id=10, lead_status_id=101)
    assert (cfg.lead_pipeline_id, cfg.lead_status_id) == (10, 101)


def test_unknown_mirror_accepts_ids(app, make_user) -> None:
    owner_id = _owner_id(make_user)
    cfg = settings.update_config(
        owner_id,
        settings.parse_config({"subdomain": "acme", "lead_pipeline_id": 7, "lead_status_id": 8}),
    )
    assert (cfg.lead_pipeline_id, cfg.lead_status_id) == (7, 8)


def test_switching_account_forgets_tokens(app, make_user, connected, configure) -> None:
    from crm_app.services.tokens import load_tokens

    owner_id = _owner_id(make_user)
    connected(owner_id)
    assert load_tokens(owner_id) is not None
    configure(owner_id)  # same account and integration: nothing changes
    assert load_tokens(owner_id) is not None
    configure(owner_id, subdomain="another")
    assert load_tokens(owner_id) is None
    assert connection.status(owner_id)["status"] == "disconnected"


def test_settings_form_round_trip(app, client, make_user, login, page_csrf) -> None:
    from tests.connect.conftest import HX

    make_user("ivan", role="user", owner="acme")
    login("ivan")
    token = page_csrf()
    form = {
        "csrf_token": token,
        "subdomain": "acme.amocrm.com",
        "client_id": "cid-1",
        "client_secret": "very-secret-value",
        "redirect_uri": "",
        "sync_contacts": "on",
        "auto_create_lead": "on",
    }
    resp = client.post("/admin/crm/ui/settings", data=form, headers=HX)
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert 'id="settings-saved"' in html and "very-secret-value" not in html
    assert resp.headers["HX-Trigger"] == "crm-settings-saved"
    cfg = settings.get_or_create_config(connection_owner(client))
    assert (cfg.subdomain, cfg.domain) == ("acme", "amocrm.com")
    assert (cfg.sync_contacts, cfg.sync_leads, cfg.sync_tasks) == (True, False, False)
    assert cfg.auto_create_lead is True

    bad = dict(form, subdomain="bad host!", client_secret="another-secret")
    resp = client.post("/admin/crm/ui/settings", data=bad, headers=HX)
    assert resp.status_code == 422
    html = resp.get_data(as_text=True)
    assert 'id="err-subdomain"' in html and 'aria-invalid="true"' in html
    assert "another-secret" not in html
    assert settings.get_or_create_config(connection_owner(client)).client_secret == (
        "very-secret-value"
    )

    # Without JavaScript: a plain form post redirects back to the page (PRG).
    resp = client.post("/admin/crm/ui/settings", data=form)
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/admin/crm")


def connection_owner(client) -> int:
    from crm_app.models import User

    return db.session.query(User).filter_by(username="ivan").one().owner_id
