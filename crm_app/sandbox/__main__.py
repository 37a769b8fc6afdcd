"""CLI: `python -m crm_app.sandbox --host 127.0.0.1 --port PORT [switches]` (see --help)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence

from crm_app.sandbox.config import CHOICES, SandboxConfig
from crm_app.sandbox.server import SandboxServer

D = SandboxConfig()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults for valued options only: an on/off switch's help says what turning it on does."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m crm_app.sandbox",
        description="amoCRM API v4 sandbox: OAuth, API, limits and webhooks on one origin.",
        formatter_class=HelpFormatter,
    )
    add = p.add_argument
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    g.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    g.add_argument("--verbose", action="store_true", help="log every request line")

    g = p.add_argument_group("accounts and seeded data")
    g.add_argument("--subdomain", default=D.subdomain, help="first account; others get a number")
    g.add_argument("--accounts", type=int, default=D.accounts, help="how many accounts")
    g.add_argument(
        "--base-domain", default=D.base_domain, help="amocrm.ru (platform 1) or kommo.com"
    )
    g.add_argument("--api-domain", default=D.api_domain, help="the JWT api_domain claim")
    g.add_argument("--contacts", type=int, default=D.contacts, help="seeded contacts per account")
    g.add_argument("--leads", type=int, default=D.leads, help="seeded leads per account")
    g.add_argument("--tasks", type=int, default=D.tasks, help="seeded tasks per account")
    g.add_argument("--companies", type=int, default=None, help="default: contacts/10, ≤5000")
    g.add_argument("--seed", type=int, default=D.seed, help="RNG seed of the generated data")
    g.add_argument("--seed-anchor", type=int, default=None, help="unix time the history ends at")
    g.add_argument("--utc-offset", type=int, default=D.utc_offset, help="account time zone, hours")

    g = p.add_argument_group("integration and OAuth")
    g.add_argument("--client-id", default=D.client_id, help="the registered integration")
    g.add_argument("--client-secret", default=D.client_secret, help="its secret key")
    g.add_argument("--redirect-uri", default=D.redirect_uri, help="must match exactly")
    g.add_argument(
        "--integration-name", default=D.integration_name, help="shown on the consent page"
    )
    g.add_argument("--disconnect-url", default=None, help="the integration's disconnect hook")
    g.add_argument("--code-ttl", type=int, default=D.code_ttl, help="authorization code, seconds")
    g.add_argument("--access-ttl", type=int, default=D.access_ttl, help="expires_in, seconds")
    g.add_argument("--refresh-ttl", type=int, default=D.refresh_ttl, help="refresh token, seconds")
    g.add_argument(
        "--refresh-grace",
        action="store_true",
        help="Kommo rule: an old refresh token works until the new one is used",
    )
    g.add_argument(
        "--no-server-time",
        dest="server_time",
        action="store_false",
        help="leave server_time out of token responses",
    )
    g.add_argument(
        "--oauth-client-errors",
        choices=CHOICES["oauth_client_errors"],
        default=D.oauth_client_errors,
        help="wrong client_id/secret/redirect: hint (400) or invalid_client (401)",
    )

    g = p.add_argument_group("API behaviour")
    g.add_argument(
        "--default-limit", type=int, default=D.default_limit, help="page size without limit="
    )
    g.add_argument("--max-limit", type=int, default=D.max_limit, help="largest page size")
    g.add_argument(
        "--over-limit",
        choices=CHOICES["over_limit"],
        default=D.over_limit,
        help="limit>max: cap it, or fall back to the default size",
    )
    g.add_argument(
        "--next-link",
        choices=CHOICES["next_link"],
        default=D.next_link,
        help="_links.next only while more data exists, or on every full page",
    )
    g.add_argument(
        "--no-api-filter",
        dest="api_filter",
        action="store_false",
        help="no paid filter add-on: filter[...] silently ignored on leads/contacts/companies",
    )
    g.add_argument(
        "--duplicate-control",
        action="store_true",
        help="complex add merges a new contact into one with the same phone/email",
    )
    g.add_argument(
        "--complex-merge-in-batch",
        action="store_true",
        help="with --duplicate-control: items of one complex request sharing a phone/email "
        "become one deal naming all their request_ids (UNCONFIRMED)",
    )
    g.add_argument(
        "--payment-required",
        choices=CHOICES["payment_required"],
        default=D.payment_required,
        help="expired subscription: 402 on writes or on all",
    )
    g.add_argument(
        "--multitext-enum-keys",
        choices=CHOICES["multitext_enum_keys"],
        default=D.multitext_enum_keys,
        help="phone/email values carry enum_code, enum, or both (plus enum_id)",
    )
    g.add_argument(
        "--401-lang",
        dest="unauthorized_lang",
        choices=CHOICES["unauthorized_lang"],
        default=D.unauthorized_lang,
        help="language of the 401 detail",
    )

    g = p.add_argument_group("limits")
    g.add_argument(
        "--rate-limit",
        type=int,
        default=D.rate_limit,
        help="API calls per second per integration and account; 0 = off",
    )
    g.add_argument(
        "--account-rate-limit",
        type=int,
        default=D.account_rate_limit,
        help="API calls per second per account; 0 = off",
    )
    g.add_argument(
        "--429-body",
        dest="body_429",
        choices=CHOICES["body_429"],
        default=D.body_429,
        help="Kommo's JSON with retry_after, or an nginx HTML page",
    )
    g.add_argument("--retry-after-header", action="store_true", help="add Retry-After to 429s")
    g.add_argument(
        "--block-after",
        type=int,
        default=D.block_after,
        help="429s within --block-window that block the account (403); 0 = never",
    )
    g.add_argument("--block-window", type=float, default=D.block_window, help="seconds")
    g.add_argument(
        "--block-duration",
        type=float,
        default=D.block_duration,
        help="seconds; 0 = until POST /_sandbox/unblock",
    )
    g.add_argument(
        "--403-body",
        dest="body_403",
        choices=CHOICES["body_403"],
        default=D.body_403,
        help="plain text '403 Forbidden' (Kommo docs) or an nginx HTML page",
    )

    g = p.add_argument_group("webhooks")
    g.add_argument(
        "--webhook-time-scale",
        type=float,
        default=D.webhook_time_scale,
        help="multiplies retry delays and the 2-hour disable window",
    )
    g.add_argument(
        "--webhook-timeout",
        type=float,
        default=D.webhook_timeout,
        help="seconds amoCRM waits for an answer",
    )
    g.add_argument(
        "--webhook-workers",
        type=int,
        default=D.webhook_workers,
        help="sender threads (each destination still gets events in order)",
    )
    g.add_argument(
        "--webhook-text-values",
        choices=CHOICES["webhook_text_values"],
        default=D.webhook_text_values,
        help="plain custom field values as bare strings (RU sample) or {value: …}",
    )
    g.add_argument(
        "--webhook-status-also-update",
        action="store_true",
        help="a status change also sends leads[update]",
    )
    g.add_argument(
        "--webhook-old-pipeline-id",
        action="store_true",
        help="add old_pipeline_id to leads[status]",
    )
    g.add_argument(
        "--webhook-disable-threshold",
        type=int,
        default=D.webhook_disable_threshold,
        help="invalid answers within 2 hours (scaled) that disable a hook",
    )

    g = p.add_argument_group("Chats API (amojo)")
    g.add_argument("--chat-channel-id", default=D.chat_channel_id, help="register a channel")
    g.add_argument("--chat-secret", default=D.chat_secret, help="the channel's secret")
    g.add_argument(
        "--chat-hook-url", default=D.chat_hook_url, help="the channel's hook URL, with :scope_id"
    )
    g.add_argument(
        "--chat-hook-timeout",
        type=float,
        default=D.chat_hook_timeout,
        help="seconds a channel hook waits (sent once, never retried)",
    )
    g.add_argument(
        "--chat-unsorted-setting",
        default=D.chat_unsorted_setting,
        help="the account-webhook setting that receives unsorted[add] for a new chat",
    )
    del add
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
