"""Encryption at rest for client secrets and tokens (Fernet / MultiFernet)."""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Text
from sqlalchemy.types import TypeDecorator

logger = logging.getLogger(__name__)

_keyring: MultiFernet | None = None


class SecretDecryptError(RuntimeError):
    """A stored secret could not be decrypted with any configured key."""


def parse_keys(raw: str) -> list[bytes]:
    """Split the comma-separated CRM_ENCRYPTION_KEY value; the first key encrypts."""
    return [k.strip().encode() for k in raw.split(",") if k.strip()]


def init_keys(raw: str) -> None:
    """Install the keyring used by EncryptedText columns."""
    global _keyring
    keys = parse_keys(raw)
    if not keys:
        raise RuntimeError("CRM_ENCRYPTION_KEY is empty")
    _keyring = MultiFernet([Fernet(k) for k in keys])


def dev_key(instance_path: str) -> str:
    """Return (creating once) a local key file for the embedded default; never used in prod."""
    path = Path(instance_path) / "encryption.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(Fernet.generate_key())
        path.chmod(0o600)
    return path.read_text().strip()


def keyring() -> MultiFernet:
    if _keyring is None:
        raise RuntimeError("encryption keys are not initialised (create_app not called)")
    return _keyring


def encrypt(value: str) -> str:
    return keyring().encrypt(value.encode()).decode()


def decrypt(value: str) -> str:
    try:
        return keyring().decrypt(value.encode()).decode()
    except InvalidToken as exc:
        raise SecretDecryptError(
            "stored secret cannot be decrypted with CRM_ENCRYPTION_KEY"
        ) from exc


def rotate(value: str) -> str:
    """Re-encrypt a stored ciphertext with the newest key."""
    return keyring().rotate(value.encode()).decode()


class EncryptedText(TypeDecorator[str]):
    """A text column whose value is Fernet-encrypted in the database."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: object) -> str | None:
        return None if value is None else encrypt(value)

    def process_result_value(self, value: str | None, dialect: object) -> str | None:
        return None if value is None else decrypt(value)
