"""The outbound amoCRM proxy, run as a real subprocess in front of a local TLS endpoint."""

from __future__ import annotations

import base64
import datetime as dt
import gc
import importlib.util
import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent
PROXY_SCRIPT = ROOT / "proxy" / "amocrm_proxy.py"
TEST_HOST = "api-test.amocrm.ru"
AUTH_USER, AUTH_PASSWORD = "svc", "proxy-pass-9c1e"


def _load_proxy_module() -> ModuleType:
    # By file path: `import proxy.amocrm_proxy` would collide with the proxy.py library.
    spec = importlib.util.spec_from_file_location("amocrm_proxy_under_test", PROXY_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


amocrm_proxy = _load_proxy_module()


# --- a local HTTPS endpoint standing in for amoCRM ---------------------------------------------


def _write_certs(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a leaf for TEST_HOST, so clients verify TLS as they would in prod."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy-test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TEST_HOST)]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(TEST_HOST)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "leaf.pem", folder / "leaf.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


class _EchoHandler(BaseHTTPRequestHandler):
    def _send_json(self, data: dict[str, object]) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send_json(
            {
                "path": self.path,
                "host": self.headers.get("Host"),
                "bearer": (self.headers.get("Authorization") or "").startswith("Bearer "),
            }
        )

    def do_POST(self) -> None:
        # Just enough of amoCRM's token endpoint for the OAuth client.
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send_json(
            {
                "token_type": "Bearer",
                "expires_in": 86400,
                "access_token": "access-through-proxy",
                "refresh_token": "refresh-through-proxy",
            }
        )

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class TlsEndpoint:
    port: int
    ca_file: str

    def url(self, path: str) -> str:
        return f"https://{TEST_HOST}:{self.port}{path}"


@pytest.fixture(scope="module")
def tls_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsEndpoint]:
    ca_path, cert_path, key_path = _write_certs(tmp_path_factory.mktemp("tls"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield TlsEndpoint(port=server.server_address[1], ca_file=str(ca_path))
    finally:
        server.shutdown()
        server.server_close()


# --- the proxy subprocess -----------------------------------------------------------------------


@dataclass
class RunningProxy:
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, predicate: Callable[[str], bool], timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if predicate(text):
                return text
            time.sleep(0.05)
        raise AssertionError(f"proxy log never matched; log was:\n{self.log()}")


def _start_proxy(folder: Path, *args: str, env: dict[str, str] | None = None) -> RunningProxy:
    log_path = folder / "proxy.log"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("AMOCRM_PROXY")}
    # A $HOME nobody can write to, as for a service user: the proxy must not need one.
    child_env["HOME"] = "/dev/null"
    child_env.update(env or {})
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(PROXY_SCRIPT), "--bind", "127.0.0.1", "--port", "0", *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=child_env,
            cwd=str(ROOT),
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", log_path.read_text(errors="replace"))
        if match:
            return RunningProxy(int(match.group(1)), log_path, process)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait(5)
    raise AssertionError(f"proxy did not start:\n{log_path.read_text(errors='replace')}")


def _stop(running: RunningProxy) -> None:
    running.process.terminate()
    try:
        running.process.wait(10)
    except subprocess.TimeoutExpired:
        running.process.kill()
        running.process.wait(5)


def _test_args(endpoint: TlsEndpoint) -> list[str]:
    return ["--resolve", f"{TEST_HOST}=127.0.0.1", "--allow-port", str(endpoint.port)]


@pytest.fixture(scope="module")
def open_proxy(
    tmp_path_factory: pytest.TempPathFactory, tls_endpoint: TlsEndpoint
) -> Iterator[RunningProxy]:
    running = _start_proxy(tmp_path_factory.mktemp("proxy"), *_test_args(tls_endpoint))
    yield running
    _stop(running)


@pytest.fixture(scope="module")
def auth_proxy(
    tmp_path_factory: pytest.TempPathFactory, tls_endpoint: TlsEndpoint
) -> Iterator[RunningProxy]:
    running = _start_proxy(
        tmp_path_factory.mktemp("auth-proxy"),
        *_test_args(tls_endpoint),
        env={"AMOCRM_PROXY_AUTH": f"{AUTH_USER}:{AUTH_PASSWORD}"},
    )
    yield running
    _stop(running)


def _raw(proxy_port: int, request_line: str, headers: str = "") -> str:
    """Send one request head to the proxy and return its status line."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=5) as sock:
        sock.sendall(f"{request_line} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0].decode("latin-1")


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no HTTPS_PROXY / NO_PROXY from the environment
    return session


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["example.com:443", "amocrm.ru.evil.example:443", "amocrm.ru:443", "kommo.com.evil.io:443"],
)
def test_refuses_hosts_outside_the_allowlist(open_proxy: RunningProxy, target: str) -> None:
    assert _raw(open_proxy.port, f"CONNECT {target}").startswith("HTTP/1.1 403")


def test_refuses_port_80_and_other_ports(open_proxy: RunningProxy) -> None:
    assert _raw(open_proxy.port, "CONNECT demo.amocrm.ru:80").startswith("HTTP/1.1 403")
    assert _raw(open_proxy.port, "CONNECT demo.amocrm.ru:8443").startswith("HTTP/1.1 403")


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "93.184.216.34", "2130706433"])
def test_refuses_ip_literals(
    open_proxy: RunningProxy, tls_endpoint: TlsEndpoint, host: str
) -> None:
    # Even on the test port that is allowed for the allowlisted name.
    status = _raw(open_proxy.port, f"CONNECT {host}:{tls_endpoint.port}")
    assert status.startswith("HTTP/1.1 403")


def test_refuses_plain_http_forwarding(open_proxy: RunningProxy, tls_endpoint: TlsEndpoint) -> None:
    status = _raw(open_proxy.port, f"GET http://{TEST_HOST}:{tls_endpoint.port}/api/v4/account")
    assert status.startswith("HTTP/1.1 403")
    response = _session().get(
        f"http://{TEST_HOST}:{tls_endpoint.port}/api/v4/account",
        proxies={"http": open_proxy.url},
        timeout=10,
    )
    assert response.status_code == 403


def test_refused_tunnel_is_an_error_for_requests(open_proxy: RunningProxy) -> None:
    with pytest.raises(requests.exceptions.ProxyError):
        _session().get("https://example.com/", proxies={"https": open_proxy.url}, timeout=10)


# --- tunnelling ---------------------------------------------------------------------------------


def test_tunnels_an_allowlisted_host_to_the_tls_endpoint(
    open_proxy: RunningProxy, tls_endpoint: TlsEndpoint
) -> None:
    response = _session().get(
        tls_endpoint.url("/api/v4/account?with=users"),
        proxies={"https": open_proxy.url},
        verify=tls_endpoint.ca_file,
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json() == {
        "path": "/api/v4/account?with=users",
        "host": f"{TEST_HOST}:{tls_endpoint.port}",
        "bearer": False,
    }


def test_logs_one_line_per_tunnel_without_query_strings(
    open_proxy: RunningProxy, tls_endpoint: TlsEndpoint
) -> None:
    # Earlier tests' tunnels log when they close, which may still be under way: close what is left
    # (their sessions' pooled connections go with the garbage) and let the log settle.
    gc.collect()
    before, stable_since = -1, time.monotonic()
    while time.monotonic() - stable_since < 0.6:
        now = open_proxy.log().count(f"host={TEST_HOST}")
        if now != before:
            before, stable_since = now, time.monotonic()
        time.sleep(0.1)
    response = _session().get(
        tls_endpoint.url("/oauth2/access_token?code=secret-code-123"),
        proxies={"https": open_proxy.url},
        verify=tls_endpoint.ca_file,
        timeout=10,
    )
    assert response.status_code == 200
    text = open_proxy.wait_for_log(lambda t: t.count(f"host={TEST_HOST}") > before)
    time.sleep(0.3)  # a second line for the same tunnel would show up by now
    lines = [line for line in open_proxy.log().splitlines() if f"host={TEST_HOST}" in line]
    assert len(lines) == before + 1
    assert "result=ok" in lines[-1]
    assert f"port={tls_endpoint.port}" in lines[-1]
    assert "secret-code-123" not in text
    assert "oauth2" not in text


def test_plain_http_refusal_log_has_no_path_or_query(open_proxy: RunningProxy) -> None:
    _raw(open_proxy.port, "GET http://demo.amocrm.ru/webhooks/amocrm/tok-55?token=qs-secret-77")
    text = open_proxy.wait_for_log(lambda t: "reason=plain-http" in t)
    assert "qs-secret-77" not in text
    assert "tok-55" not in text


# --- the app's amoCRM client through the proxy ----------------------------------------------


def _tunnels_to_test_host(running: RunningProxy) -> int:
    return sum(
        1
        for line in running.log().splitlines()
        if f"host={TEST_HOST}" in line and "result=ok" in line
    )


def test_amocrm_client_get_goes_through_the_proxy(
    auth_proxy: RunningProxy, tls_endpoint: TlsEndpoint
) -> None:
    from crm_app.amocrm.client import AmoCRMClient
    from crm_app.amocrm.hosts import AmoHosts
    from crm_app.amocrm.tokens import StaticTokenSource

    before = _tunnels_to_test_host(auth_proxy)
    hosts = AmoHosts("test", "amocrm.ru", base_url=f"https://{TEST_HOST}:{tls_endpoint.port}")
    proxy_url = f"http://{AUTH_USER}:{AUTH_PASSWORD}@127.0.0.1:{auth_proxy.port}"
    with AmoCRMClient(hosts, StaticTokenSource("long-lived-token"), proxy=proxy_url) as client:
        client.session.verify = tls_endpoint.ca_file  # the client ignores REQUESTS_CA_BUNDLE
        account = client.get_account()
    assert account["path"] == "/api/v4/account"
    assert account["bearer"] is True
    auth_proxy.wait_for_log(lambda _: _tunnels_to_test_host(auth_proxy) > before)
    assert "long-lived-token" not in auth_proxy.log()


def test_amocrm_token_exchange_goes_through_the_proxy(
    auth_proxy: RunningProxy, tls_endpoint: TlsEndpoint
) -> None:
    from crm_app.amocrm.client import exchange_code
    from crm_app.amocrm.hosts import AmoHosts

    before = _tunnels_to_test_host(auth_proxy)
    hosts = AmoHosts("test", "amocrm.ru", base_url=f"https://{TEST_HOST}:{tls_endpoint.port}")
    session = requests.Session()
    session.verify = tls_endpoint.ca_file
    tokens = exchange_code(
        hosts,
        "client-id",
        "client-secret-value",
        "https://crm.example.com/admin/crm/callback",
        "auth-code-value",
        proxy=f"http://{AUTH_USER}:{AUTH_PASSWORD}@127.0.0.1:{auth_proxy.port}",
        session=session,
    )
    assert tokens.access_token == "access-through-proxy"
    auth_proxy.wait_for_log(lambda _: _tunnels_to_test_host(auth_proxy) > before)
    log = auth_proxy.log()
    assert "client-secret-value" not in log and "auth-code-value" not in log


# --- basic auth ---------------------------------------------------------------------------------


def _basic(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Proxy-Authorization: Basic {token}\r\n"


def test_auth_proxy_refuses_missing_and_bad_credentials(
    auth_proxy: RunningProxy, tls_endpoint: TlsEndpoint
) -> None:
    target = f"CONNECT {TEST_HOST}:{tls_endpoint.port}"
    assert _raw(auth_proxy.port, target).startswith("HTTP/1.1 407")
    assert _raw(auth_proxy.port, target, _basic(AUTH_USER, "wrong")).startswith("HTTP/1.1 407")
    assert _raw(auth_proxy.port, target, _basic("other", AUTH_PASSWORD)).startswith("HTTP/1.1 407")
    assert _raw(auth_proxy.port, target, "Proxy-Authorization: Basic !!!\r\n").startswith(
        "HTTP/1.1 407"
    )
    with pytest.raises(requests.exceptions.ProxyError):
        _session().get(
            tls_endpoint.url("/"),
            proxies={"https": f"http://{AUTH_USER}:nope@127.0.0.1:{auth_proxy.port}"},
            verify=tls_endpoint.ca_file,
            timeout=10,
        )


def test_auth_proxy_checks_credentials_before_the_destination(auth_proxy: RunningProxy) -> None:
    # Without credentials nobody learns what the allowlist holds.
    assert _raw(auth_proxy.port, "CONNECT example.com:443").startswith("HTTP/1.1 407")


def test_auth_proxy_tunnels_with_good_credentials_and_never_logs_them(
    auth_proxy: RunningProxy, tls_endpoint: TlsEndpoint
) -> None:
    _raw(auth_proxy.port, f"CONNECT {TEST_HOST}:{tls_endpoint.port}", _basic(AUTH_USER, "x"))
    proxy_url = f"http://{AUTH_USER}:{AUTH_PASSWORD}@127.0.0.1:{auth_proxy.port}"
    response = _session().get(
        tls_endpoint.url("/api/v4/leads"),
        proxies={"https": proxy_url},
        verify=tls_endpoint.ca_file,
        timeout=10,
    )
    assert response.status_code == 200
    text = auth_proxy.wait_for_log(lambda t: "result=ok" in t)
    token = base64.b64encode(f"{AUTH_USER}:{AUTH_PASSWORD}".encode()).decode()
    assert AUTH_PASSWORD not in text
    assert token not in text
    assert "reason=auth" in text


# --- the policy itself, without sockets ---------------------------------------------------------


def test_allowlist_patterns_are_validated() -> None:
    assert amocrm_proxy.parse_allow(["*.amocrm.ru,*.kommo.com", "Exact.Example.org."]) == (
        "*.amocrm.ru",
        "*.kommo.com",
        "exact.example.org",
    )
    for bad in ["*", "*.ru", "", "10.0.0.1", "*.amo crm.ru", "a/b.ru", "user@amocrm.ru"]:
        with pytest.raises(amocrm_proxy.PolicyError):
            amocrm_proxy.parse_allow([bad])


def test_policy_decisions() -> None:
    policy = amocrm_proxy.Policy()
    assert policy.refusal("demo.amocrm.ru", 443) is None
    assert policy.refusal("api-b.amocrm.ru", 443) is None
    assert policy.refusal("www.kommo.com", 443) is None
    assert policy.refusal("demo.amocrm.com", 443) is None
    assert policy.refusal("amocrm.ru", 443) == "not-allowlisted"
    assert policy.refusal("demoamocrm.ru", 443) == "not-allowlisted"
    assert policy.refusal("demo.amocrm.ru.evil.io", 443) == "not-allowlisted"
    assert policy.refusal("demo.amocrm.ru", 80) == "port-not-allowed"
    assert policy.refusal("127.0.0.1", 443) == "ip-literal"
    assert policy.refusal("[::ffff:127.0.0.1]", 443) == "ip-literal"
    assert policy.refusal("0x7f.1", 443) == "ip-literal"
    assert policy.refusal("dem%6f.amocrm.ru", 443) == "bad-host"


def test_policy_never_resolves_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = amocrm_proxy.Policy()

    def fake_getaddrinfo(*_: object, **__: object) -> list[tuple[object, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 443))]

    monkeypatch.setattr(amocrm_proxy.socket, "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(LookupError):
        policy.upstream_ip("demo.amocrm.ru", 443)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::1",
        "169.254.169.254",
        "0.0.0.0",
        "0.1.2.3",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:0.0.0.0",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::7f00:1",  # local-use NAT64 of 127.0.0.1
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "::127.0.0.1",  # IPv4-compatible
        "fe80::1",
        "fe80::1%eth0",
        "ff02::1",
        "224.0.0.1",
    ],
)
def test_policy_never_connects_to_local_addresses_in_any_spelling(
    monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    policy = amocrm_proxy.Policy()

    def fake_getaddrinfo(*_: object, **__: object) -> list[tuple[object, ...]]:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, 443))]

    monkeypatch.setattr(amocrm_proxy.socket, "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(LookupError):
        policy.upstream_ip("demo.amocrm.ru", 443)


@pytest.mark.parametrize(
    "address", ["95.213.0.10", "10.8.0.7", "198.18.0.5", "::ffff:95.213.0.10", "2a00:1450::1"]
)
def test_policy_connects_to_public_and_vpn_addresses(
    monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    policy = amocrm_proxy.Policy()

    def fake_getaddrinfo(*_: object, **__: object) -> list[tuple[object, ...]]:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, 443))]

    monkeypatch.setattr(amocrm_proxy.socket, "getaddrinfo", fake_getaddrinfo)
    assert policy.upstream_ip("demo.amocrm.ru", 443) == str(ipaddress.ip_address(address))


def test_help_marks_the_test_only_options() -> None:
    result = subprocess.run(
        [sys.executable, str(PROXY_SCRIPT), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=str(ROOT),
    )
    assert result.returncode == 0
    assert re.search(r"--resolve NAME=IP\s+TEST ONLY", result.stdout)
    assert re.search(r"--allow-port PORT\s+TEST ONLY", result.stdout)


def test_rejects_an_open_allowlist_on_the_command_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(PROXY_SCRIPT), "--allow", "*", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=str(ROOT),
        env={**os.environ, "HOME": "/dev/null"},
    )
    assert result.returncode == 2
    assert "invalid allowlist entry" in result.stderr
