"""The factory boots on PostgreSQL and the basic auth endpoints answer."""


def test_probes(client):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json["checks"]["database"] == "ok"
    assert ready.json["checks"]["broker"] == "ok"


def test_token_issue_and_bad_login(client, make_user):
    make_user("alice", role="admin")
    assert (
        client.post("/auth/token", json={"username": "alice", "password": "nope-nope"}).status_code
        == 401
    )
    ok = client.post("/auth/token", json={"username": "alice", "password": "password123"})
    assert ok.status_code == 200
    assert ok.json["token_type"] == "Bearer" and ok.json["expires_in"] > 0


def test_browser_login(client, make_user, login):
    make_user("bob", role="user")
    login("bob")
    assert client.get("/admin/crm").status_code == 200
