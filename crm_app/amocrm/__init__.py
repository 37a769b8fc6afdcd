"""Pure amoCRM API v4 client: hosts, OAuth, tokens, throttling, errors and field helpers."""

from crm_app.amocrm.client import AmoCRMClient, Page, exchange_code
from crm_app.amocrm.errors import (
    AmoCRMAPIError,
    AmoCRMAuthError,
    AmoCRMBlocked,
    AmoCRMConfigError,
    AmoCRMNotFound,
    AmoCRMPaymentRequired,
    AmoCRMRateLimited,
    AmoCRMTokenExpired,
    AmoCRMUnavailable,
    AmoCRMValidationError,
)
from crm_app.amocrm.hosts import ALLOWED_DOMAINS, AmoHosts, is_amocrm_referer, validate_subdomain
from crm_app.amocrm.oauth import OAuthClient
from crm_app.amocrm.retry import RetryPolicy
from crm_app.amocrm.throttle import (
    FileThrottle,
    LocalThrottle,
    NullThrottle,
    RedisThrottle,
    Throttle,
)
from crm_app.amocrm.tokens import RefreshingTokenSource, StaticTokenSource, TokenSet, TokenSource

__all__ = [
    "ALLOWED_DOMAINS",
    "AmoCRMAPIError",
    "AmoCRMAuthError",
    "AmoCRMBlocked",
    "AmoCRMClient",
    "AmoCRMConfigError",
    "AmoCRMNotFound",
    "AmoCRMPaymentRequired",
    "AmoCRMRateLimited",
    "AmoCRMTokenExpired",
    "AmoCRMUnavailable",
    "AmoCRMValidationError",
    "AmoHosts",
    "FileThrottle",
    "LocalThrottle",
    "NullThrottle",
    "OAuthClient",
    "Page",
    "RedisThrottle",
    "RefreshingTokenSource",
    "RetryPolicy",
    "StaticTokenSource",
    "Throttle",
    "TokenSet",
    "TokenSource",
    "exchange_code",
    "is_amocrm_referer",
    "validate_subdomain",
]
