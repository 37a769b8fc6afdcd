"""amoCRM Chats API ("amojo") signatures: requests we send and channel webhooks we receive.

The rule is the documented one (https://www.amocrm.ru/developers/content/chats/chat-api-reference,
"Подпись запроса"): ``X-Signature`` is the lowercase hex HMAC-SHA1, keyed by the channel secret as
text, of ``METHOD\\nContent-MD5\\nContent-Type\\nDate\\nPATH``, where Content-MD5 is the lowercase
hex MD5 of the exact body bytes and PATH has no host and no query. Channel webhooks carry
``X-Signature`` = HMAC-SHA1 of the raw body alone
(https://www.amocrm.ru/developers/content/chats/chat-webhooks).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import urlsplit

CONTENT_TYPE = "application/json"
# A signature is accepted for 15 minutes from its Date header.
SIGNATURE_TTL = 15 * 60


def content_md5(body: bytes) -> str:
    """Lowercase hex MD5 of the exact bytes sent (of b"" for a bodyless GET)."""
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


def rfc2822(moment: datetime | None = None) -> str:
    """A Date header value such as ``Thu, 16 Dec 2021 13:15:29 +0000``."""
    moment = moment or datetime.now(UTC)
    return format_datetime(moment.astimezone(UTC)).replace("-0000", "+0000")


def string_to_sign(method: str, md5: str, content_type: str, date: str, path: str) -> str:
    """The five documented parts, newline-joined; missing headers count as empty strings."""
    return "\n".join((method.upper(), md5, content_type, date, urlsplit(path).path))


def hmac_sha1(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha1).hexdigest()


def request_headers(
    secret: str, method: str, path: str, body: bytes, date: str | None = None
) -> dict[str, str]:
    """Date, Content-Type, Content-MD5 and X-Signature for one Chats API request."""
    date = date or rfc2822()
    md5 = content_md5(body)
    signed = string_to_sign(method, md5, CONTENT_TYPE, date, path)
    return {
        "Date": date,
        "Content-Type": CONTENT_TYPE,
        "Content-MD5": md5,
        "X-Signature": hmac_sha1(secret, signed.encode("utf-8")),
    }


def request_signature_ok(
    secret: str, method: str, path: str, headers: dict[str, str], body: bytes
) -> bool:
    """Whether a request's X-Signature matches its headers as sent (compared in constant time).

    The server signs the header strings it received; the body's MD5 is also checked against the
    body, so a signature cannot be reused for other content.
    """
    md5 = headers.get("Content-MD5", "")
    if md5.lower() != content_md5(body):
        return False
    signed = string_to_sign(
        method, md5, headers.get("Content-Type", ""), headers.get("Date", ""), path
    )
    expected = hmac_sha1(secret, signed.encode("utf-8"))
    return hmac.compare_digest(expected, headers.get("X-Signature", "").lower())


def webhook_signature(secret: str, body: bytes) -> str:
    """The X-Signature amojo puts on a channel webhook: HMAC-SHA1 of the raw body."""
    return hmac_sha1(secret, body)


def webhook_signature_ok(secret: str, body: bytes, signature: str | None) -> bool:
    """Constant-time check over the raw bytes; trailing whitespace trimmed only as a fallback.

    Some clients of the channel trim a trailing newline before hashing; the raw body is what the
    documentation signs, so it is tried first.
    """
    if not signature or not secret:
        return False
    given = signature.strip().lower()
    if hmac.compare_digest(webhook_signature(secret, body), given):
        return True
    trimmed = body.rstrip()
    return trimmed != body and hmac.compare_digest(webhook_signature(secret, trimmed), given)


def date_fresh(date: str, now: float) -> bool:
    """Whether a Date header is within the signature's 15-minute life (either direction)."""
    from email.utils import parsedate_to_datetime

    try:
        sent = parsedate_to_datetime(date)
    except (TypeError, ValueError, IndexError):
        return False
    if sent.tzinfo is None:
        return False
    return abs(now - sent.timestamp()) <= SIGNATURE_TTL
