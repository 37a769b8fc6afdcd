"""CLI: `python -m crm_app.sandbox --host 127.0.0.1 --port PORT [switches]` (see --help)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from crm_app.sandbox.config import CHOICES, SandboxConfig
from crm_app.sandbox.server import SandboxServer

D = SandboxConfig()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults for valued options only: an on/off switch's help says what turning it on does."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def _option(
    group: argparse._ArgumentGroup,
    flag: str,
    help: str,
    *,
    dest: str | None = None,
    kind: Callable[[str], Any] | None = None,
) -> None:
    """A valued switch for the SandboxConfig field `dest` (by default the flag's own name).

    The default comes from SandboxConfig, the choices from CHOICES, and the type (`kind`) from
    the default (int or float) unless given.
    """
    dest = dest or flag.removeprefix("--").replace("-", "_")
    default = getattr(D, dest)
    extra: dict[str, Any] = {}
    if kind is None and isinstance(default, int | float) and not isinstance(default, bool):
        kind = type(default)
    if kind is not None:
        extra["type"] = kind
    if dest in CHOICES:
        extra["choices"] = CHOICES[dest]
    group.add_argument(flag, dest=dest, default=default, help=help, **extra)


def _switch(group: argparse._ArgumentGroup, flag: str, help: str) -> None:
    """An on/off switch for a SandboxConfig flag: `--name` turns it on, `--no-name` off."""
    if flag.startswith("--no-"):
        dest, action = flag.removeprefix("--no-").replace("-", "_"), "store_false"
    else:
        dest, action = flag.removeprefix("--").replace("-", "_"), "store_true"
    group.add_argument(flag, dest=dest, action=action, help=help)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m crm_app.sandbox",
        description="amoCRM API v4 sandbox: OAuth, API, limits and webhooks on one origin.",
        formatter_class=HelpFormatter,
    )
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    g.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    g.add_argument("--verbose", action="store_true", help="log every request line")

    g = p.add_argument_group("accounts and seeded data")
    _option(g, "--subdomain", "first account; others get a number")
    _option(g, "--accounts", "how many accounts")
    _option(g, "--base-domain", "amocrm.ru (platform 1) or kommo.com")
    _option(g, "--api-domain", "the JWT api_domain claim")
    _option(g, "--contacts", "seeded contacts per account")
    _option(g, "--leads", "seeded leads per account")
    _option(g, "--tasks", "seeded tasks per account")
    _option(g, "--companies", "default: contacts/10, ≤5000", kind=int)
    _option(g, "--seed", "RNG seed of the generated data")
    _option(g, "--seed-anchor", "unix time the history ends at", kind=int)
    _option(g, "--utc-offset", "account time zone, hours")

    g = p.add_argument_group("integration and OAuth")
    _option(g, "--client-id", "the registered integration")
    _option(g, "--client-secret", "its secret key")
    _option(g, "--redirect-uri", "must match exactly")
    _option(g, "--integration-name", "shown on the consent page")
    _option(g, "--disconnect-url", "the integration's disconnect hook")
    _option(g, "--code-ttl", "authorization code, seconds")
    _option(g, "--access-ttl", "expires_in, seconds")
    _option(g, "--refresh-ttl", "refresh token, seconds")
    _switch(
        g, "--refresh-grace", "Kommo rule: an old refresh token works until the new one is used"
    )
    _switch(g, "--no-server-time", "leave server_time out of token responses")
    _option(
        g,
        "--oauth-client-errors",
        "wrong client_id/secret/redirect: hint (400) or invalid_client (401)",
    )

    g = p.add_argument_group("API behaviour")
    _option(g, "--default-limit", "page size without limit=")
    _option(g, "--max-limit", "largest page size")
    _option(g, "--over-limit", "limit>max: cap it, or fall back to the default size")
    _option(g, "--next-link", "_links.next only while more data exists, or on every full page")
    _switch(
        g,
        "--no-api-filter",
        "no paid filter add-on: filter[...] silently ignored on leads/contacts/companies",
    )
    _switch(
        g,
        "--duplicate-control",
        "complex add merges a new contact into one with the same phone/email",
    )
    _switch(
        g,
        "--complex-merge-in-batch",
        "with --duplicate-control: items of one complex request sharing a phone/email "
        "become one deal naming all their request_ids (UNCONFIRMED)",
    )
    _option(g, "--payment-required", "expired subscription: 402 on writes or on all")
    _option(
        g,
        "--multitext-enum-keys",
        "phone/email values carry enum_code, enum, or both (plus enum_id)",
    )
    _option(g, "--401-lang", "language of the 401 detail", dest="unauthorized_lang")

    g = p.add_argument_group("limits")
    _option(g, "--rate-limit", "API calls per second per integration and account; 0 = off")
    _option(g, "--account-rate-limit", "API calls per second per account; 0 = off")
    _option(
        g, "--429-body", "Kommo's JSON with retry_after, or an nginx HTML page", dest="body_429"
    )
    _switch(g, "--retry-after-header", "add Retry-After to 429s")
    _option(
        g, "--block-after", "429s within --block-window that block the account (403); 0 = never"
    )
    _option(g, "--block-window", "seconds")
    _option(g, "--block-duration", "seconds; 0 = until POST /_sandbox/unblock")
    _option(
        g,
        "--403-body",
        "plain text '403 Forbidden' (Kommo docs) or an nginx HTML page",
        dest="body_403",
    )

    g = p.add_argument_group("webhooks")
    _option(g, "--webhook-time-scale", "multiplies retry delays and the 2-hour disable window")
    _option(g, "--webhook-timeout", "seconds amoCRM waits for an answer")
    _option(g, "--webhook-workers", "sender threads (each destination still gets events in order)")
    _option(
        g,
        "--webhook-text-values",
        "plain custom field values as bare strings (RU sample) or {value: …}",
    )
    _switch(g, "--webhook-status-also-update", "a status change also sends leads[update]")
    _switch(g, "--webhook-old-pipeline-id", "add old_pipeline_id to leads[status]")
    _option(
        g,
        "--webhook-disable-threshold",
        "invalid answers within 2 hours (scaled) that disable a hook",
    )

    g = p.add_argument_group("Chats API (amojo)")
    _option(g, "--chat-channel-id", "register a channel")
    _option(g, "--chat-secret", "the channel's secret")
    _option(g, "--chat-hook-url", "the channel's hook URL, with :scope_id")
    _option(g, "--chat-hook-timeout", "seconds a channel hook waits (sent once, never retried)")
    _option(
        g,
        "--chat-unsorted-setting",
        "the account-webhook setting that receives unsorted[add] for a new chat",
    )
    return p


def config_from_args(ns: argparse.Namespace) -> SandboxConfig:
    names = {f.name for f in dataclasses.fields(SandboxConfig)}
    values = {k: v for k, v in vars(ns).items() if k in names}
    values["quiet"] = not ns.verbose
    return SandboxConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    started = time.perf_counter()
    server = SandboxServer(host=ns.host, port=ns.port, config=config_from_args(ns))
    cfg = server.config
    seeded = time.perf_counter() - started
    accounts = ", ".join(f"{a.subdomain} (id {a.id})" for a in server.accounts)
    print(
        f"amoCRM sandbox: accounts {accounts}; client_id {cfg.client_id}; "
        f"redirect_uri {cfg.redirect_uri}; seeded in {seeded:.1f}s",
        file=sys.stderr,
        flush=True,
    )
    server.bind()
    print(f"listening on {server.url}", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
