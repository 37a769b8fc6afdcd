"""Connecting an owner's amoCRM account: OAuth state and callback, private codes, tokens, hooks."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from flask import current_app
from sqlalchemy import CursorResult, select, update

from crm_app.amocrm.errors import (
    AmoCRMAPIError,
    AmoCRMAuthError,
    AmoCRMBlocked,
    AmoCRMConfigError,
    AmoCRMTokenExpired,
    AmoCRMUnavailable,
)
from crm_app.amocrm.hosts import (
    AUTHORIZE_MODES,
    AmoHosts,
    is_amocrm_referer,
    split_referer,
    validate_subdomain,
)
from crm_app.amocrm.tokens import TokenSet
from crm_app.extensions import db
from crm_app.i18n import mark as _n
from crm_app.i18n import translate as _t
from crm_app.models import (
    AmoConfig,
    AmoToken,
    AmoUser,
    ConnectionStatus,
    OAuthState,
    SyncLog,
)
from crm_app.services import tokens as token_store
from crm_app.services.chats.channel import disconnect_channel, reconnect_channel
from crm_app.services.inbound.fields import load_field_map
from crm_app.services.settings import get_or_create_config
from crm_app.services.sync import start_sync, sync_reference_data
from crm_app.services.webhooks.subscription import subscribe, unsubscribe

logger = logging.getLogger(__name__)

# A state issued to a Bearer (JSON API) caller has no browser session: its nonce is
# "{user_id}:api" and the callback accepts it from a browser signed in as that same user.
API_NONCE_SUFFIX = "api"
STATE_TTL = timedelta(minutes=10)
_MAX_TOKEN_LENGTH = 8192


# -- errors ---------------------------------------------------------------------------------------


class ConnectError(Exception):
    """Connecting failed; ``message`` is safe to show (never a secret), ``status`` the HTTP code."""

    status = 400

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class CallbackError(ConnectError):
    """The OAuth callback was refused before anything was sent to amoCRM (HTTP 400)."""


# -- OAuth: authorize URL and callback --------------------------------------------------------


def _hash_state(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


def _base_url() -> str | None:
    return current_app.config.get("AMOCRM_BASE_URL") or None


def _require_integration(cfg: AmoConfig, *, need_subdomain: bool) -> None:
    missing = []
    if need_subdomain and not cfg.subdomain:
        missing.append(_t("поддомен"))
    if not cfg.client_id:
        missing.append("Client ID")
    if not cfg.client_secret:
        missing.append("Client Secret")
    if missing:
        raise ConnectError(
            _t("Сначала сохраните настройки: %(fields)s", fields=", ".join(missing)), status=400
        )


def build_auth_url(
    owner_id: int, user_id: int, session_nonce: str, mode: str = "post_message"
) -> str:
    """The amoCRM consent URL with a fresh single-use ``state`` bound to this session and owner."""
    if not session_nonce:
        raise ConnectError(_t("Сессия не установлена"), status=400)
    if mode not in AUTHORIZE_MODES:
        raise ConnectError(_t("Неизвестный режим авторизации"), status=400)
    cfg = get_or_create_config(owner_id)
    _require_integration(cfg, need_subdomain=False)
    now = datetime.now(UTC)
    # Expired states are useless: drop this owner's leftovers while we are here.
    db.session.execute(
        OAuthState.__table__.delete().where(
            OAuthState.owner_id == owner_id, OAuthState.expires_at < now - STATE_TTL
        )
    )
    state = secrets.token_urlsafe(32)
    db.session.add(
        OAuthState(
            state_hash=_hash_state(state),
            owner_id=owner_id,
            user_id=user_id,
            session_nonce=session_nonce,
            created_at=now,
            expires_at=now + STATE_TTL,
        )
    )
    db.session.commit()
    # The consent page lives on www.{domain}; the subdomain may still be unknown (the callback's
    # referer tells us), so any valid placeholder serves for building the URL.
    hosts = AmoHosts(cfg.subdomain or "account", cfg.domain or "amocrm.ru", base_url=_base_url())
    return hosts.authorize_url(cfg.client_id, state, mode)


def api_nonce(user_id: int) -> str:
    """The nonce a state gets when a Bearer API caller asks for the consent URL."""
    return f"{user_id}:{API_NONCE_SUFFIX}"


def _claim_state(state: str, session_nonce: str, user_id: int | None) -> OAuthState:
    """Find, check and spend the state; every failure is a CallbackError before any request."""
    row = db.session.scalar(select(OAuthState).where(OAuthState.state_hash == _hash_state(state)))
    if row is None:
        raise CallbackError(_t("Неизвестный параметр state: начните подключение заново"))
    same_session = bool(session_nonce) and hmac.compare_digest(row.session_nonce, session_nonce)
    same_api_user = (
        user_id is not None
        and row.user_id == user_id
        and hmac.compare_digest(row.session_nonce, api_nonce(user_id))
    )
    if not (same_session or same_api_user):
        raise CallbackError(_t("Параметр state выдан другой сессии: начните подключение заново"))
    if row.used_at is not None:
        raise CallbackError(_t("Этот ответ amoCRM уже был использован: начните подключение заново"))
    now = datetime.now(UTC)
    if row.expires_at <= now:
        raise CallbackError(_t("Срок действия ссылки истёк: получите URL авторизации заново"))
    # Atomic claim: of two simultaneous callbacks with the same state only one wins.
    claimed = cast(
        "CursorResult[Any]",
        db.session.execute(
            update(OAuthState)
            .where(OAuthState.id == row.id, OAuthState.used_at.is_(None))
            .values(used_at=now)
        ),
    )
    db.session.commit()
    if claimed.rowcount != 1:
        raise CallbackError(_t("Этот ответ amoCRM уже был использован: начните подключение заново"))
    return row


def _arg(args: Mapping[str, Any], name: str) -> str:
    value = args.get(name)
    return value.strip() if isinstance(value, str) else ""


def handle_callback(
    args: Mapping[str, Any], session_nonce: str, user_id: int | None = None
) -> AmoConfig:
    """Check the redirect from amoCRM (state, referer, account) and exchange its code.

    ``session_nonce`` is the browser session's nonce; ``user_id`` (the signed-in user) lets a
    state issued through the JSON API (:func:`api_nonce`) complete in that user's browser.
    """
    state = _arg(args, "state")
    if not state:
        raise CallbackError(_t("В ответе amoCRM нет параметра state"))
    row = _claim_state(state, session_nonce, user_id)
    owner_id = row.owner_id
    cfg = get_or_create_config(owner_id)
    error = _arg(args, "error")
    if error:
        logger.info("owner %s: amoCRM consent declined (%s)", owner_id, error[:40])
        if error == "access_denied":
            raise CallbackError(_t("Доступ не предоставлен: в amoCRM нажали «Отказать»"))
        raise CallbackError(_t("amoCRM вернул ошибку авторизации"))
    code = _arg(args, "code")
    if not code:
        raise CallbackError(_t("В ответе amoCRM нет кода авторизации"))
    referer = _arg(args, "referer")
    if not is_amocrm_referer(referer):
        raise CallbackError(_t("Ответ пришёл не от amoCRM: неверный параметр referer"))
    sub, domain = split_referer(referer)
    if cfg.subdomain and (sub, domain) != (cfg.subdomain, cfg.domain):
        raise CallbackError(
            _t(
                "Подтверждён другой аккаунт (%(got)s), а в настройках указан %(want)s",
                got=f"{sub}.{domain}",
                want=f"{cfg.subdomain}.{cfg.domain}",
            )
        )
    client_id = _arg(args, "client_id")
    if client_id and not hmac.compare_digest(client_id, cfg.client_id):
        raise CallbackError(_t("Ответ amoCRM относится к другой интеграции"))
    _require_integration(cfg, need_subdomain=False)
    if not cfg.subdomain:
        cfg.subdomain, cfg.domain = sub, domain
        db.session.commit()
    _exchange_and_store(owner_id, cfg, code, how="oauth")
    return cfg


# -- exchanging codes and tokens ----------------------------------------------------------------


def _exchange_error(exc: AmoCRMAPIError) -> ConnectError:
    if isinstance(exc, AmoCRMAuthError):
        reason = exc.hint or exc.detail or exc.message
        return ConnectError(_t("amoCRM отклонил код авторизации: %(reason)s", reason=reason))
    if isinstance(exc, AmoCRMBlocked):
        return ConnectError(_t("amoCRM заблокировал запрос (HTTP 403)"), status=502)
    if isinstance(exc, AmoCRMUnavailable):
        return ConnectError(_t("amoCRM не ответил, попробуйте ещё раз"), status=502)
    return ConnectError(_t("amoCRM вернул ошибку: %(reason)s", reason=exc.message), status=502)


def _record_error(owner_id: int, message: str) -> None:
    cfg = get_or_create_config(owner_id)
    cfg.last_error = message[:500]
    cfg.last_error_at = datetime.now(UTC)
    db.session.commit()


def _mark_connected(owner_id: int, how: str) -> AmoConfig:
    cfg = get_or_create_config(owner_id)
    cfg.status = ConnectionStatus.CONNECTED
    cfg.last_error = None
    cfg.last_error_at = None
    cfg.blocked_until = None
    cfg.connected_at = datetime.now(UTC)
    db.session.add(
        SyncLog(owner_id=owner_id, operation="connect", status="success", details={"via": how})
    )
    db.session.commit()
    return cfg


def _exchange_and_store(owner_id: int, cfg: AmoConfig, code: str, how: str) -> None:
    from crm_app.services.amo import oauth_client_for

    try:
        tokens = oauth_client_for(cfg).exchange_code(code)
    except AmoCRMAPIError as exc:
        logger.warning("owner %s: code exchange failed (%s)", owner_id, exc.message)
        error = _exchange_error(exc)
        _record_error(owner_id, error.message)
        raise error from None
    token_store.save_tokens(owner_id, tokens, kind=token_store.OAUTH)
    _mark_connected(owner_id, how)
    logger.info("owner %s connected amoCRM %s via %s", owner_id, cfg.subdomain, how)
    after_connect(owner_id)


def connect_with_code(owner_id: int, code: str) -> AmoConfig:
    """A private integration's authorization code (20 minutes, single use), exchanged at once."""
    code = (code or "").strip()
    if not code or len(code) > _MAX_TOKEN_LENGTH or any(c.isspace() for c in code):
        raise ConnectError(_t("Вставьте код авторизации из настроек интеграции"))
    cfg = get_or_create_config(owner_id)
    _require_integration(cfg, need_subdomain=True)
    _exchange_and_store(owner_id, cfg, code, how="code")
    return cfg


def connect_with_long_lived_token(owner_id: int, token: str) -> AmoConfig:
    """A long-lived token (no refresh token): checked against the account, then stored."""
    from crm_app.amocrm.client import AmoCRMClient
    from crm_app.amocrm.tokens import StaticTokenSource
    from crm_app.services.amo import hosts_for, shared_throttle

    token = (token or "").strip()
    if not token or len(token) > _MAX_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise ConnectError(_t("Вставьте долгосрочный токен из настроек интеграции"))
    cfg = get_or_create_config(owner_id)
    if not cfg.subdomain:
        raise ConnectError(_t("Сначала сохраните настройки: %(fields)s", fields=_t("поддомен")))
    tokens = TokenSet.from_access_token(token)
    if tokens.expires_at <= datetime.now(UTC):
        raise ConnectError(_t("Срок действия этого токена уже истёк"))
    # Probe with the bare token first, so a rejected one never replaces a working connection.
    probe = AmoCRMClient(
        hosts_for(cfg),
        StaticTokenSource(token),
        throttle=shared_throttle(),
        proxy=current_app.config.get("AMOCRM_PROXY") or None,
        timeout=current_app.config["AMOCRM_TIMEOUT"],
    )
    try:
        probe.get_account()
    except AmoCRMTokenExpired as exc:
        logger.warning("owner %s: long-lived token rejected (%s)", owner_id, exc.message)
        message = _t("amoCRM отклонил токен: проверьте поддомен и срок действия")
        _record_error(owner_id, message)
        raise ConnectError(message) from None
    except AmoCRMAPIError as exc:
        error = _exchange_error(exc)
        _record_error(owner_id, error.message)
        raise error from None
    finally:
        probe.close()
    token_store.save_tokens(owner_id, tokens, kind=token_store.LONG_LIVED)
    _mark_connected(owner_id, "long_lived_token")
    logger.info("owner %s connected amoCRM %s with a long-lived token", owner_id, cfg.subdomain)
    after_connect(owner_id)
    return cfg


# -- after connecting -------------------------------------------------------------------------------


def _current_user(client: Any, user_id: int | None) -> dict[str, Any]:
    """The granting user; the users API needs admin rights, so 403 falls back to the mirror."""
    if not user_id:
        return {}
    try:
        response = client.request("GET", f"/api/v4/users/{int(user_id)}")
        data = response.json() if response.content.strip() else None
        if isinstance(data, dict):
            return data
    except AmoCRMBlocked as exc:
        if exc.from_gateway:
            raise
        logger.info("users API refused (no admin rights); using the mirrored user if any")
    except (AmoCRMAPIError, ValueError) as exc:
        logger.info("could not read the amoCRM user %s: %s", user_id, exc)
    return {}


def after_connect(owner_id: int) -> dict[str, Any]:
    """Fill the account card, then hand over to reference data, webhooks and the first sync.

    Everything here is best effort: the tokens are already stored, so a failure is shown on the
    badge (``last_error``) instead of undoing the connection.
    """
    from crm_app.services.amo import client_for_owner, record_api_failure

    cfg = get_or_create_config(owner_id)
    try:
        client = client_for_owner(owner_id)
        account = client.get_account(with_="users_groups,datetime_settings")
        user = _current_user(client, account.get("current_user_id"))
    except AmoCRMAPIError as exc:
        logger.warning("owner %s: reading the amoCRM account failed: %s", owner_id, exc.message)
        record_api_failure(owner_id, exc)
        return account_info(owner_id)
    if isinstance(account.get("id"), int):
        cfg.account_id = account["id"]
    if account.get("name"):
        cfg.account_name = str(account["name"])[:255]
    sub = account.get("subdomain")
    if isinstance(sub, str):
        with contextlib.suppress(AmoCRMConfigError):
            cfg.subdomain = validate_subdomain(sub)  # follows a renamed account
    if not user and account.get("current_user_id"):
        mirrored = db.session.get(AmoUser, (owner_id, int(account["current_user_id"])))
        if mirrored is not None:
            user = {"name": mirrored.name, "email": mirrored.email}
    if user.get("name"):
        cfg.user_name = str(user["name"])[:255]
    if user.get("email"):
        cfg.user_email = str(user["email"])[:255]
    db.session.commit()

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("reference data", lambda: sync_reference_data(owner_id)),
        ("custom-field catalogue", lambda: load_field_map(owner_id)),
        ("webhook subscription", lambda: subscribe(owner_id)),
        ("first sync", lambda: start_sync(owner_id, trigger="connect")),
        ("chat channel", lambda: reconnect_channel(owner_id)),
    ]
    for name, step in steps:
        try:
            step()
        except Exception as exc:  # a failed step must not undo the connection
            db.session.rollback()
            logger.warning("owner %s: %s after connect failed: %s", owner_id, name, exc)
    return account_info(owner_id)


# -- disconnecting ------------------------------------------------------------------------------


def disconnect(owner_id: int) -> AmoConfig:
    """Unsubscribe webhooks (best effort), forget the tokens, keep the settings."""
    cfg = get_or_create_config(owner_id)
    if token_store.load_tokens(owner_id) is not None:
        try:
            unsubscribe(owner_id)
        except Exception as exc:  # the tokens may already be dead; forgetting them still works
            db.session.rollback()
            logger.warning("owner %s: webhook unsubscribe failed: %s", owner_id, exc)
    try:
        disconnect_channel(owner_id)
    except Exception as exc:  # best effort, like the webhooks: the account is disconnected anyway
        db.session.rollback()
        logger.warning("owner %s: chat channel disconnect failed: %s", owner_id, exc)
    token_store.delete_tokens(owner_id)
    cfg = get_or_create_config(owner_id)
    db.session.refresh(cfg)
    cfg.status = ConnectionStatus.DISCONNECTED
    cfg.connected_at = None
    cfg.last_error = None
    cfg.last_error_at = None
    db.session.add(SyncLog(owner_id=owner_id, operation="disconnect", status="success", details={}))
    db.session.commit()
    logger.info("owner %s disconnected amoCRM", owner_id)
    return cfg


def hook_signature(client_secret: str, client_uuid: str, account_id: str) -> str:
    """hex HMAC-SHA256(client_secret, "{client_uuid}|{account_id}") as amoCRM signs the hook."""
    message = f"{client_uuid}|{account_id}".encode()
    return hmac.new(client_secret.encode(), message, hashlib.sha256).hexdigest()


def handle_disconnect_hook(args: Mapping[str, Any]) -> bool:
    """amoCRM's GET when an admin disables the integration; True if signed and applied."""
    client_uuid = _arg(args, "client_uuid")
    account_raw = _arg(args, "account_id")
    signature = _arg(args, "signature").lower()
    if not client_uuid or not account_raw.isdigit() or not signature:
        return False
    candidates = db.session.scalars(
        select(AmoConfig).where(
            AmoConfig.account_id == int(account_raw), AmoConfig.client_id == client_uuid
        )
    ).all()
    matched = False
    for cfg in candidates:
        if not cfg.client_secret:
            continue
        expected = hook_signature(cfg.client_secret, client_uuid, account_raw)
        if not hmac.compare_digest(expected, signature):
            continue
        matched = True
        token_store.delete_tokens(cfg.owner_id)
        cfg.status = ConnectionStatus.DISCONNECTED
        cfg.connected_at = None
        cfg.last_error = _n("Интеграция отключена в amoCRM")
        cfg.last_error_at = datetime.now(UTC)
        db.session.add(
            SyncLog(
                owner_id=cfg.owner_id, operation="disconnect_hook", status="success", details={}
            )
        )
        logger.info("owner %s: amoCRM disconnect hook applied", cfg.owner_id)
    db.session.commit()
    if not matched:
        logger.warning("amoCRM disconnect hook with a bad signature or unknown account ignored")
    return matched


# -- read models for the page and the API ---------------------------------------------------------


def _token_row(owner_id: int) -> AmoToken | None:
    return db.session.scalar(select(AmoToken).where(AmoToken.owner_id == owner_id))


def status(owner_id: int) -> dict[str, Any]:
    """The connection state for the badge and ``GET /admin/crm/status`` (never any secret)."""
    cfg = get_or_create_config(owner_id)
    row = _token_row(owner_id)
    state = cfg.status
    if row is None and state == ConnectionStatus.CONNECTED:
        state = ConnectionStatus.DISCONNECTED  # tokens vanished underneath (e.g. deleted by hand)
    return {
        "status": state,
        "connected": state == ConnectionStatus.CONNECTED,
        "last_error": cfg.last_error,
        "last_error_at": _iso(cfg.last_error_at),
        "connected_at": _iso(cfg.connected_at),
        "token_kind": row.kind if row else None,
        "token_expires_at": _iso(row.expires_at) if row else None,
        "token_refreshed_at": _iso(row.refreshed_at) if row else None,
        "subdomain": cfg.subdomain or None,
        "domain": cfg.domain,
        "account_name": cfg.account_name,
        "configured": bool(cfg.subdomain and cfg.client_id and cfg.client_secret),
        "client_secret_set": bool(cfg.client_secret),
        "blocked_until": _iso(cfg.blocked_until),
    }


def account_info(owner_id: int) -> dict[str, Any]:
    """The account card: ``account_id, account_name, subdomain, user_name, user_email``."""
    cfg = get_or_create_config(owner_id)
    return {
        "account_id": cfg.account_id,
        "account_name": cfg.account_name,
        "subdomain": cfg.subdomain or None,
        "domain": cfg.domain,
        "user_name": cfg.user_name,
        "user_email": cfg.user_email,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def is_connected(owner_id: int) -> bool:
    """Connected with tokens at hand: a sync can start (an error badge does not stop it)."""
    cfg = db.session.scalar(select(AmoConfig).where(AmoConfig.owner_id == owner_id))
    if cfg is None or cfg.status == ConnectionStatus.DISCONNECTED:
        return False
    return _token_row(owner_id) is not None
