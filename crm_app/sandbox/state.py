"""The Sandbox: accounts, clock, tokens, limits, logs and the webhook fan-out, minus HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from crm_app.sandbox.amojo import Channel, ChatHub
from crm_app.sandbox.config import SandboxConfig
from crm_app.sandbox.limits import Limiter
from crm_app.sandbox.oauth import Integration, TokenStore
from crm_app.sandbox.query import SearchIndex
from crm_app.sandbox.reqlog import RequestLog
from crm_app.sandbox.seed import build_accounts
from crm_app.sandbox.sender import Dispatcher
from crm_app.sandbox.store import Account
from crm_app.sandbox.telegram import TelegramFake
from crm_app.sandbox.webhooks import Event, ItemBuilder, build_body, encode


class Clock:
    """The sandbox's one source of time: wall and monotonic, moved forward by ``advance``.

    Codes and tokens expire, webhook retries fall due and rate-limit windows and blocks end by
    this clock, so a test moves time on instead of sleeping. ``freeze`` stops it between
    advances, so "nothing happens until then" is checked without waiting.
    """

    def __init__(self) -> None:
        self.offset = 0.0
        self._frozen: tuple[float, float] | None = None  # (wall, monotonic) at freeze
        self._listeners: list[Callable[[], None]] = []

    def time(self) -> float:
        base = self._frozen[0] if self._frozen else time.time()
        return base + self.offset

    def monotonic(self) -> float:
        base = self._frozen[1] if self._frozen else time.monotonic()
        return base + self.offset

    def now(self) -> int:
        return int(self.time())

    def freeze(self) -> None:
        if self._frozen is None:
            self._frozen = (time.time(), time.monotonic())

    def on_advance(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every advance (the webhook sender re-checks what is due)."""
        self._listeners.append(listener)

    def advance(self, seconds: float) -> int:
        self.offset += seconds
        for listener in self._listeners:
            listener()
        return self.now()


class Sandbox:
    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.clock = Clock()
        self.accounts: list[Account] = build_accounts(self.config)
        self.tokens = TokenStore(self.config, self.clock.now)
        self.limiter = Limiter(self.config, clock=self.clock.monotonic)
        self.log = RequestLog(self.config.request_log_size)
        self.search = SearchIndex()
        self.dispatcher = Dispatcher(
            self.config, lambda aid: self.account_by_id(aid).lock, clock=self.clock.monotonic
        )
        self.clock.on_advance(self.dispatcher.wake)
        self.chats = ChatHub(self)
        self.telegram = TelegramFake()
        if self.config.chat_channel_id and self.config.chat_secret:
            self.chats.register(
                Channel(
                    self.config.chat_channel_id,
                    self.config.chat_secret,
                    hook_url=self.config.chat_hook_url,
                )
            )
        self.faults: list[dict[str, Any]] = []
        self.faults_lock = threading.Lock()
        self.tokens.register(
            Integration(
                client_id=self.config.client_id,
                client_secret=self.config.client_secret,
                redirect_uri=self.config.redirect_uri,
                name=self.config.integration_name,
                disconnect_url=self.config.disconnect_url,
            )
        )

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        self.dispatcher.start()

    def stop(self) -> None:
        self.dispatcher.stop()

    # --- accounts ---------------------------------------------------------------------
    @property
    def default_account(self) -> Account:
        return self.accounts[0]

    def account_by_id(self, account_id: int) -> Account:
        for account in self.accounts:
            if account.id == account_id:
                return account
        raise KeyError(account_id)

    def find_account(self, key: Any) -> Account | None:
        """By id, subdomain or "<subdomain>.amocrm.ru"; None/"" gives the default account."""
        if key in (None, ""):
            return self.default_account
        text = str(key).strip().lower()
        for account in self.accounts:
            if text in (str(account.id), account.subdomain, f"{account.subdomain}.{self.domain}"):
                return account
        return None

    @property
    def domain(self) -> str:
        return self.config.base_domain

    # --- integrations -----------------------------------------------------------------
    def register_integration(
        self,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        name: str | None = None,
        disconnect_url: str | None = None,
        accounts: list[Any] | None = None,
        scopes: list[str] | None = None,
    ) -> Integration:
        account_ids = None
        if accounts:
            found = [self.find_account(a) for a in accounts]
            account_ids = [a.id for a in found if a is not None]
        integration = Integration(
            client_id=client_id,
            client_secret=client_secret,
            redirect_uri=redirect_uri,
            name=name or client_id,
            disconnect_url=disconnect_url,
            account_ids=account_ids,
            scopes=scopes or ["crm", "notifications"],
        )
        return self.tokens.register(integration)

    # --- change notifications ---------------------------------------------------------
    def notify(self, account: Account, events: list[Event]) -> int:
        """Queue one delivery per subscribed destination; returns how many were queued."""
        if not events:
            return 0
        with account.lock:
            hooks = list(account.webhooks.values())
        queued = 0
        for hook in sorted(hooks, key=lambda h: (h["sort"], h["id"])):
            if hook.get("disabled"):
                continue
            wanted = set(hook["settings"])
            matched = [e for e in events if e.setting in wanted]
            if not matched:
                continue
            body = encode(build_body(account, self.domain, matched))
            names = [f"{e.kind}[{e.action}]" for e in matched]
            self.dispatcher.enqueue(hook, account.id, body, names)
            queued += 1
        return queued

    def items(self, account: Account) -> ItemBuilder:
        return ItemBuilder(account, self.config.utc_offset, self.config.webhook_text_values)

    def add_event(
        self,
        account: Account,
        type_: str,
        entity_type: str,
        entity_id: int,
        user_id: int,
        after: list[dict[str, Any]] | None = None,
        before: list[dict[str, Any]] | None = None,
    ) -> None:
        """The /api/v4/events feed; only changes made while the sandbox runs are recorded."""
        with account.lock:
            number = account.next_event_no
            account.next_event_no += 1
            account.events.append(
                {
                    "id": f"01sb{account.number:02d}{number:020d}",
                    "type": type_,
                    "entity_id": entity_id,
                    "entity_type": entity_type,
                    "created_by": user_id,
                    "created_at": self.clock.now(),
                    "value_after": after or [],
                    "value_before": before or [],
                    "account_id": account.id,
                }
            )

    # --- faults -----------------------------------------------------------------------
    def take_fault(self, method: str, path: str) -> dict[str, Any] | None:
        with self.faults_lock:
            for fault in self.faults:
                if not path.startswith(fault.get("path", "/api/v4/")):
                    continue
                if fault.get("method") and fault["method"].upper() != method:
                    continue
                fault["remaining"] -= 1
                if fault["remaining"] <= 0:
                    self.faults.remove(fault)
                return fault
        return None
