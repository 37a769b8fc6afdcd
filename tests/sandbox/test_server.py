"""The CLI, the Python API, startup with a large seed, and page throughput."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from crm_app.sandbox import SandboxServer
from crm_app.sandbox.__main__ import build_parser, config_from_args
from tests.sandbox.helpers import Api, Factory, api_for

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cli_serves_the_configured_account_and_integration() -> None:
    port = free_port()
    cmd = [
        sys.executable, "-m", "crm_app.sandbox", "--host", "127.0.0.1", "--port", str(port),
        "--subdomain", "acme", "--client-id", "cli-client", "--client-secret", "cli-secret",
        "--redirect-uri", "https://app.test/admin/crm/callback", "--contacts", "7", "--leads", "3",
        "--tasks", "2", "--rate-limit", "7", "--accounts", "2",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                info = requests.get(f"{base}/_sandbox/", timeout=1).json()
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "sandbox did not start"
                time.sleep(0.1)
        assert [a["subdomain"] for a in info["accounts"]] == ["acme", "acme2"]
        assert info["accounts"][0]["counts"]["contacts"] == 7
        assert info["config"]["rate_limit"] == 7
        assert info["integrations"][0]["client_id"] == "cli-client"
        code = requests.post(
            f"{base}/_sandbox/auth-code", json={"client_id": "cli-client"}, timeout=5
        ).json()["code"]
        token = requests.post(
            f"{base}/oauth2/access_token",
            json={
                "client_id": "cli-client",
                "client_secret": "cli-secret",
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": "https://app.test/admin/crm/callback",
            },
            timeout=5,
        )
        assert token.status_code == 200
        account = Api(base, token.json()["access_token"]).get("/api/v4/account").json()
        assert account["subdomain"] == "acme"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_help_lists_the_switches() -> None:
    out = build_parser().format_help()
    for flag in (
        "--rate-limit", "--refresh-grace", "--no-api-filter", "--429-body", "--webhook-time-scale",
        "--client-id", "--redirect-uri", "--accounts", "--block-after",
    ):  # fmt: skip
        assert flag in out
    cfg = config_from_args(build_parser().parse_args(["--no-api-filter", "--rate-limit", "0"]))
    assert (cfg.api_filter, cfg.rate_limit, cfg.contacts) == (False, 0, 50)


def test_python_api(make_sandbox: Factory) -> None:
    with SandboxServer(port=0, contacts=5, leads=2, tasks=1) as server:
        assert server.url.startswith("http://127.0.0.1:")
        api = Api(server.url, server.token_pair()["access_token"])
        assert api.get("/api/v4/contacts").json()["_embedded"]["contacts"][0]["account_id"] == (
            server.account.id
        )
        assert server.requests_log()[-1]["path"] == "/api/v4/contacts"
        server.clear_requests()
        assert server.requests_log() == []


def test_large_seed_pages_through_in_updated_at_order(make_sandbox: Factory) -> None:
    """The seed `make bench` times (sandbox rows): every record there, pages in order."""
    server = make_sandbox(contacts=100_000, leads=50_000, tasks=20_000, rate_limit=0)
    api = api_for(server)
    counts = requests.get(f"{server.url}/_sandbox/accounts", timeout=5).json()[0]["counts"]
    assert (counts["contacts"], counts["leads"], counts["tasks"]) == (100_000, 50_000, 20_000)
    url: str | None = "/api/v4/contacts?limit=250&order[updated_at]=asc&filter[updated_at][from]=0"
    stamps: list[int] = []
    for _ in range(20):
        assert url is not None
        body = api.get(url).json()
        stamps.extend(c["updated_at"] for c in body["_embedded"]["contacts"])
        url = body["_links"].get("next", {}).get("href")
    assert len(stamps) == 5000 and stamps == sorted(stamps)
