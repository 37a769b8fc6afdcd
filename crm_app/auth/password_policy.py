"""Which passwords may be set (NIST SP 800-63B, section 5.1.1.2).

No composition rules and no expiry; instead a new password must be at least 8 characters, and
is refused when it appears in a list of passwords from breach corpuses, or is otherwise easy to
guess (a dictionary word, a keyboard walk, a repetition or sequence, the username). Both checks
come from zxcvbn (pinned in requirements.txt): its `passwords` list holds the 30,000 most common
passwords of public breach corpuses, and its estimator finds the patterns. Nothing is fetched
at run time.
"""

from __future__ import annotations

from functools import lru_cache

from zxcvbn import zxcvbn
from zxcvbn.frequency_lists import FREQUENCY_LISTS

MIN_LENGTH = 8
# NIST asks to allow at least 64; longer input only costs hashing time.
MAX_LENGTH = 256
# zxcvbn's score 0-1 means fewer than 10^6 guesses: an online attacker's reach.
MIN_SCORE = 2
# Words of this product that make a password guessable for anyone who knows where it is used.
CONTEXT_WORDS = ("amocrm", "kommo", "crm", "admin", "integration", "demo")


class WeakPassword(ValueError):
    """A password the policy refuses; `code` names the reason, str() explains it in English."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@lru_cache(maxsize=1)
def _breached() -> frozenset[str]:
    return frozenset(FREQUENCY_LISTS["passwords"])


def check_password(password: str, username: str = "") -> None:
    """Raise WeakPassword when `password` must not be set for `username`."""
    if len(password) < MIN_LENGTH:
        raise WeakPassword("too_short", f"The password must be at least {MIN_LENGTH} characters.")
    if len(password) > MAX_LENGTH:
        raise WeakPassword("too_long", f"The password must be at most {MAX_LENGTH} characters.")
    if password.lower() in _breached():
        raise WeakPassword(
            "breached",
            "This password is in lists of passwords leaked in data breaches; choose another.",
        )
    name = username.strip().lower()
    if name and name in password.lower() and len(password) < len(name) + MIN_LENGTH:
        raise WeakPassword("username", "The password must not be built on the username.")
    # zxcvbn's cost grows with length; the first 100 characters say enough about a guess.
    result = zxcvbn(password[:100], user_inputs=[w for w in (name, *CONTEXT_WORDS) if w])
    if int(result["score"]) < MIN_SCORE:
        raise WeakPassword(
            "guessable",
            "This password is too easy to guess (a common word, name, date, keyboard pattern "
            "or repetition); a few unrelated words make a strong one.",
        )
