"""Outbound proxy for amoCRM traffic: HTTPS tunnels to allowlisted amoCRM hosts only."""

# Run as a script (`python proxy/amocrm_proxy.py`), never imported as `proxy.…`: the proxy.py
# library owns the top-level package name `proxy`, and a package of ours by that name would
# shadow it.

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import ipaddress
import logging
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.http.exception import HttpRequestRejected, ProxyAuthenticationFailed
from proxy.http.parser import HttpParser
from proxy.http.proxy import HttpProxyBasePlugin
from proxy.proxy import Proxy

logger = logging.getLogger("amocrm_proxy")

DEFAULT_ALLOW: tuple[str, ...] = ("*.amocrm.ru", "*.amocrm.com", "*.kommo.com")
DEFAULT_BIND = "127.0.0.1"
DEFAULT_PORT = 8888
TLS_PORT = 443

# Same shape the app accepts for subdomains; anything else (spaces, '@', '%', unicode) is refused.
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62})")
_LOG_SAFE_RE = re.compile(r"[^A-Za-z0-9.\-\[\]:_]")


class PolicyError(ValueError):
    """A configuration value that would weaken the allowlist."""


def _normalize_host(raw: str) -> str:
    host = raw.strip().lower()
    return host[:-1] if host.endswith(".") else host


def is_ip_literal(host: str) -> bool:
    """True for IPv4/IPv6 literals, bracketed or not, and the numeric forms resolvers accept."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
        return True
    except ValueError:
        pass
    # inet_aton() also takes `127.1`, `0x7f.1` and `2130706433`: treat those as literals too.
    try:
        socket.inet_aton(bare)
        return True
    except OSError:
        return False


def is_hostname(host: str) -> bool:
    """True for a plain DNS name of ASCII labels (no port, userinfo or trailing junk)."""
    if not host or len(host) > 253 or not host.isascii():
        return False
    return all(_LABEL_RE.fullmatch(label) for label in host.split("."))


def parse_allow(values: Iterable[str]) -> tuple[str, ...]:
    """Validate allowlist entries: exact names or `*.domain`; a bare `*` is never accepted."""
    patterns: list[str] = []
    for value in values:
        for item in value.split(","):
            entry = _normalize_host(item)
            if not entry:
                continue
            name = entry[2:] if entry.startswith("*.") else entry
            # A wildcard on a bare TLD (`*.ru`) would make this close to an open proxy.
            if not is_hostname(name) or is_ip_literal(name) or "." not in name:
                raise PolicyError(f"invalid allowlist entry {item!r}: use NAME or *.DOMAIN")
            patterns.append(entry)
    if not patterns:
        raise PolicyError("the allowlist is empty")
    return tuple(dict.fromkeys(patterns))


def parse_resolve(values: Iterable[str]) -> dict[str, str]:
    """Parse test-only `NAME=IP` overrides."""
    result: dict[str, str] = {}
    for value in values:
        name, sep, ip = value.partition("=")
        name = _normalize_host(name)
        if not sep or not is_hostname(name):
            raise PolicyError(f"--resolve wants NAME=IP, got {value!r}")
        try:
            result[name] = str(ipaddress.ip_address(ip.strip()))
        except ValueError as exc:
            raise PolicyError(f"--resolve wants NAME=IP, got {value!r}") from exc
    return result


def parse_auth(value: str) -> bytes:
    """Return the expected `user:password` bytes of a Basic credential."""
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise PolicyError("proxy auth wants USER:PASSWORD")
    return value.encode()


@dataclass(frozen=True)
class Policy:
    """What the proxy lets through; shared read-only by every worker."""

    allow: tuple[str, ...] = DEFAULT_ALLOW
    ports: frozenset[int] = frozenset({TLS_PORT})
    resolve: Mapping[str, str] = field(default_factory=dict)
    credentials: bytes | None = None

    def host_allowed(self, host: str) -> bool:
        for pattern in self.allow:
            if pattern.startswith("*."):
                suffix = pattern[1:]  # ".amocrm.ru"
                if host.endswith(suffix) and len(host) > len(suffix):
                    return True
            elif host == pattern:
                return True
        return False

    def refusal(self, host: str, port: int | None) -> str | None:
        """Why a CONNECT to host:port is refused, or None when it may go through."""
        if is_ip_literal(host):
            return "ip-literal"
        if not is_hostname(host):
            return "bad-host"
        if not self.host_allowed(host):
            return "not-allowlisted"
        if port not in self.ports:
            return "port-not-allowed"
        return None

    def authorized(self, header: bytes | None) -> bool:
        """Check a Proxy-Authorization value; always true when no auth is configured."""
        if self.credentials is None:
            return True
        if not header:
            return False
        scheme, _, token = header.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self.credentials)

    def upstream_ip(self, host: str, port: int) -> str:
        """Resolve host once, so the address checked is the address connected to."""
        if host in self.resolve:  # test-only override, trusted as given
            return self.resolve[host]
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        for *_, sockaddr in infos:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if not is_local_address(ip):
                return str(ip)
        raise LookupError("resolves only to local addresses")


# NAT64 prefixes (RFC 6052 well-known, RFC 8215 local-use): the IPv4 address is the last 32 bits.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def embedded_ipv4(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4, IPv4-compatible)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if int(ip) >> 32 == 0 and int(ip) > 1:  # ::a.b.c.d, the deprecated IPv4-compatible form
        return ipaddress.IPv4Address(int(ip))
    return None


def is_local_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for addresses that reach this host or its cloud metadata service, in any spelling.

    `ip_address("::ffff:127.0.0.1").is_loopback` is False, so the IPv4 address hidden inside an
    IPv6 one is checked first. Private ranges stay allowed: VPN clients on the host often answer
    DNS with them (fake-ip / TUN modes).
    """
    inner = embedded_ipv4(ip)
    target: ipaddress.IPv4Address | ipaddress.IPv6Address = inner if inner is not None else ip
    return bool(
        target.is_loopback
        or target.is_link_local  # 169.254.169.254: cloud metadata
        or target.is_unspecified
        or target.is_multicast
        or target.is_reserved
        or (isinstance(target, ipaddress.IPv4Address) and int(target) >> 24 == 0)  # 0.0.0.0/8
    )


def _log_value(value: object, limit: int = 255) -> str:
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return _LOG_SAFE_RE.sub("?", text)[:limit] or "-"


class AmoCRMAllowlistPlugin(HttpProxyBasePlugin):
    """Refuses everything but authenticated CONNECTs to allowlisted amoCRM hosts on 443."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policy: Policy = getattr(self.flags, "amocrm_policy", None) or Policy()
        self._host = "-"
        self._port: int | None = None
        self._ip: str | None = None
        self._result = "incomplete"
        self._reason = ""

    def _reject(self, status: int, reason: str, text: bytes) -> HttpRequestRejected:
        self._result, self._reason = "refused", reason
        return HttpRequestRejected(
            status_code=status,
            reason=text,
            headers={b"Content-Type": b"text/plain"},
            body=text + b"\n",
        )

    def before_upstream_connection(self, request: HttpParser) -> HttpParser | None:
        self._host = _log_value(request.host or b"-")
        self._port = request.port
        auth = (
            request.header(b"proxy-authorization")
            if request.has_header(b"proxy-authorization")
            else None
        )
        if not self.policy.authorized(auth):
            self._result, self._reason = "refused", "auth"
            raise ProxyAuthenticationFailed()
        if not request.is_https_tunnel:
            # Plain-HTTP forwarding would let a caller read or send cleartext through us.
            raise self._reject(403, "plain-http", b"Forbidden: only CONNECT tunnels are allowed")
        host = _normalize_host((request.host or b"").decode("ascii", "replace"))
        reason = self.policy.refusal(host, request.port)
        if reason is not None:
            raise self._reject(403, reason, b"Forbidden: destination not allowed")
        assert request.port is not None
        try:
            self._ip = self.policy.upstream_ip(host, request.port)
        except (OSError, LookupError, UnicodeError):
            raise self._reject(502, "resolve-failed", b"Bad Gateway: cannot resolve") from None
        # Until the library reports the upstream connected (handle_client_request), it is not.
        self._result, self._reason = "error", "upstream-unreachable"
        return request

    def handle_client_request(self, request: HttpParser) -> HttpParser | None:
        self._result, self._reason = "ok", ""
        return request

    def resolve_dns(self, host: str, port: int) -> tuple[str | None, Any]:
        return self._ip, None

    def on_access_log(self, context: dict[str, Any]) -> dict[str, Any] | None:
        # One line per tunnel, written here so the library's default line (which for plain
        # HTTP would include the path and query string) is never emitted.
        level = logging.INFO if self._result == "ok" else logging.WARNING
        logger.log(
            level,
            "tunnel client=%s:%s host=%s port=%s result=%s%s bytes_down=%s ms=%s",
            _log_value(context.get("client_ip")),
            _log_value(context.get("client_port")),
            self._host,
            _log_value(self._port),
            self._result,
            f" reason={self._reason}" if self._reason else "",
            _log_value(context.get("response_bytes")),
            _log_value(context.get("connection_time_ms")),
        )
        return None


class _DropLibraryRejections(logging.Filter):
    """Our access line already records refusals; the library would log each a second time."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(
            ("HttpProtocolException: HttpRequestRejected", "HttpProtocolException: ProxyAuth")
        )


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="amocrm_proxy.py",
        description=(
            "HTTPS proxy for the app's amoCRM requests when only the host can reach amoCRM "
            "(for example through a VPN). Tunnels CONNECT to allowlisted hosts on port 443; "
            "refuses everything else."
        ),
    )
    parser.add_argument(
        "--bind",
        default=env("AMOCRM_PROXY_BIND", DEFAULT_BIND),
        help="address to listen on (env AMOCRM_PROXY_BIND; default %(default)s; "
        "the Docker bridge address is usually 172.17.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(env("AMOCRM_PROXY_PORT", DEFAULT_PORT)),
        help="port to listen on, 0 picks a free one (env AMOCRM_PROXY_PORT; default %(default)s)",
    )
    parser.add_argument(
        "--allow",
        action="append",
        default=None,
        metavar="PATTERN",
        help="allowed host, NAME or *.DOMAIN; repeatable or comma-separated "
        f"(env AMOCRM_PROXY_ALLOW; default {','.join(DEFAULT_ALLOW)})",
    )
    parser.add_argument(
        "--auth",
        default=None,
        metavar="USER:PASSWORD",
        help="require proxy basic auth; prefer env AMOCRM_PROXY_AUTH, which `ps` does not show",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        help="close a tunnel idle this many seconds (default %(default)s)",
    )
    parser.add_argument(
        "--log-level", default=env("AMOCRM_PROXY_LOG_LEVEL", "INFO"), help="default INFO"
    )
    parser.add_argument(
        "--resolve",
        action="append",
        default=[],
        metavar="NAME=IP",
        help="TEST ONLY: connect to IP for the allowlisted NAME (no DNS, no address checks)",
    )
    parser.add_argument(
        "--allow-port",
        action="append",
        type=int,
        default=[],
        metavar="PORT",
        help="TEST ONLY: also allow CONNECT to PORT (besides 443)",
    )
    return parser


def policy_from_args(args: argparse.Namespace) -> Policy:
    allow_values = args.allow or [os.environ.get("AMOCRM_PROXY_ALLOW") or ",".join(DEFAULT_ALLOW)]
    auth = args.auth or os.environ.get("AMOCRM_PROXY_AUTH") or None
    for port in args.allow_port:
        if not 0 < port < 65536:
            raise PolicyError(f"--allow-port {port} is not a TCP port")
    return Policy(
        allow=parse_allow(allow_values),
        ports=frozenset({TLS_PORT, *args.allow_port}),
        resolve=parse_resolve(args.resolve),
        credentials=parse_auth(auth) if auth else None,
    )


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )
    # The library is chatty at INFO (plugin loading, connection reuse); keep its warnings only.
    library = logging.getLogger("proxy")
    library.setLevel(max(logging.WARNING, logging.getLogger().level))
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropLibraryRejections())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        policy = policy_from_args(args)
        bind = ipaddress.ip_address(args.bind)
    except (PolicyError, ValueError) as exc:
        parser.error(str(exc))
    _setup_logging(args.log_level)
    if policy.resolve or args.allow_port:
        logger.warning(
            "test-only options in use: resolve=%s ports=%s", policy.resolve, args.allow_port
        )
    if bind.is_unspecified and policy.credentials is None:
        logger.warning("listening on all interfaces without --auth; firewall the port")

    # proxy.py insists on data folders (certificates, cache) we never use; a throwaway one keeps
    # it off $HOME, which may be missing or read-only for a service user or in a container.
    with tempfile.TemporaryDirectory(prefix="amocrm-proxy-") as data_dir:
        return _serve(args, policy, bind, data_dir)


def _serve(
    args: argparse.Namespace,
    policy: Policy,
    bind: ipaddress.IPv4Address | ipaddress.IPv6Address,
    data_dir: str,
) -> int:
    # Only the options we chose reach proxy.py: its own CLI (web server, plugins, reverse
    # proxy, TLS interception) is never exposed, so nobody can switch those on by accident.
    server = Proxy(
        ["--cache-dir", os.path.join(data_dir, "cache")],
        hostname=bind,
        port=args.port,
        plugins=[AmoCRMAllowlistPlugin],
        num_acceptors=1,
        num_workers=max(1, args.workers),
        timeout=args.idle_timeout,
        data_dir=data_dir,
    )
    # Plugins read the policy from the flags namespace; workers inherit it when forked.
    server.flags.amocrm_policy = policy
    with server:
        logger.info(
            "listening on %s:%s allow=%s auth=%s",
            args.bind,
            server.flags.port,
            ",".join(policy.allow),
            "on" if policy.credentials else "off",
        )
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
