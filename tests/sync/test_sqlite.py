"""The embedded default: SQLite, no Redis (file throttle and locks), same engine."""

from __future__ import annotations

import requests
from sqlalchemy import func, select

from crm_app.sandbox.server import SandboxServer


def test_full_and_incremental_sync_on_sqlite(base_config, tmp_path, make_sandbox):
    from crm_app import create_app
    from crm_app.amocrm.hosts import AmoHosts
    from crm_app.amocrm.oauth import OAuthClient
    from crm_app.extensions import db
    from crm_app.models import AmoConfig, Contact, Lead, Owner, SyncRun, Task
    from crm_app.services.sync import run_sync, start_sync
    from crm_app.services.tokens import save_tokens

    server: SandboxServer = make_sandbox(contacts=700, leads=260, tasks=40)
    app = create_app(
        dict(base_config)
        | {
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'crm.sqlite3'}",
            "REDIS_URL": "",
            "RATELIMIT_STORAGE_URI": "memory://",
            "INSTANCE_PATH": str(tmp_path),
            "AMOCRM_BASE_URL": server.url,
        }
    )
    with app.app_context():
        db.create_all()
        owner = Owner(name="embedded")
        db.session.add(owner)
        db.session.commit()
        cfg = server.config
        db.session.add(
            AmoConfig(
                owner_id=owner.id,
                subdomain=server.account.subdomain,
                client_id=cfg.client_id,
                client_secret=cfg.client_secret,
                redirect_uri=cfg.redirect_uri,
                status="connected",
            )
        )
        db.session.commit()
        hosts = AmoHosts(server.account.subdomain, base_url=server.url)
        oauth = OAuthClient(hosts, cfg.client_id, cfg.client_secret, cfg.redirect_uri)
        save_tokens(owner.id, oauth.exchange_code(server.auth_code()))

        run = start_sync(owner.id, full=True, enqueue=False)
        assert start_sync(owner.id, enqueue=False).id == run.id  # the partial index holds here too
        run_sync(run.id)
        db.session.expire_all()
        assert db.session.get(SyncRun, run.id).status == "success"
        for model, n in ((Contact, 700), (Lead, 260), (Task, 40)):
            assert db.session.scalar(select(func.count()).select_from(model)) == n

        cid = sorted(server.account.tables["contacts"].records)[3]
        resp = requests.patch(
            f"{server.url}/_sandbox/contacts/{cid}", json={"name": "Встроенный"}, timeout=5
        )
        assert resp.status_code == 200
        again = start_sync(owner.id, enqueue=False)
        run_sync(again.id)
        db.session.expire_all()
        assert db.session.get(SyncRun, again.id).status == "success"
        assert db.session.get(Contact, (owner.id, cid)).name == "Встроенный"
        db.session.remove()
        db.engine.dispose()
