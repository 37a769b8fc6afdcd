"""Translatable messages outside templates and views.

Services raise and store messages in Russian (the source language). `mark` only marks a message
for extraction; `translate` translates it for the page inside a request. Modules import them as
`_n` and `_t`, the keywords `pybabel extract` is given (see babel.cfg).
"""

from __future__ import annotations

from typing import Any

from flask import has_request_context


def mark(message: str) -> str:
    """Mark a message for extraction (pybabel -k _n); it is translated later by `translate`."""
    return message


def translate(message: str, **params: Any) -> str:
    """Translate for the page inside a request; workers and the CLI keep the Russian original."""
    if has_request_context():
        from flask_babel import gettext

        return str(gettext(message, **params))
    return message % params if params else message
