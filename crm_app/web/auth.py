"""Sign-in for browsers (/login, /logout) and JWT issue for the API (/auth/token)."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import urlsplit

from babel.dates import format_timedelta
from flask import (
    Blueprint,
    abort,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import get_locale, gettext
from flask_login import current_user
from sqlalchemy import select
from werkzeug.exceptions import TooManyRequests

from crm_app.auth import throttle
from crm_app.auth.passwords import verify_password
from crm_app.auth.sessions import end_session, start_session
from crm_app.auth.tokens import issue_token
from crm_app.extensions import csrf, db, limiter
from crm_app.models import User
from crm_app.schemas import spec
from crm_app.schemas.auth import TokenRequest, token_responses
from crm_app.services.accounts import sign_out_everywhere

bp = Blueprint("auth", __name__)

# Browsers drop tabs and newlines inside URLs and read "\" as "/", so "/\t/evil" and "/\evil"
# would both lead to //evil (another origin); they go before the check, not after it.
_IGNORED_IN_URLS = re.compile(r"[\x00-\x1f\x7f\\]")


def safe_next(target: str | None) -> str | None:
    """`target` when it is a path on this site (after removing what browsers ignore), else None."""
    if not target:
        return None
    cleaned = _IGNORED_IN_URLS.sub("", target).strip()
    parts = urlsplit(cleaned)
    if parts.scheme or parts.netloc or not cleaned.startswith("/") or cleaned.startswith("//"):
        return None
    return cleaned


def wait_in_words(seconds: int, locale: str | None = None) -> str:
    """ "2 minutes" / "2 минуты": how long to wait, in words (the page's language by default)."""
    return format_timedelta(
        timedelta(seconds=max(1, seconds)),
        granularity="second",
        threshold=1.0,
        format="long",
        locale=locale or str(get_locale() or "ru"),
    )


class Throttled(Exception):
    """Too many failed sign-ins for this (username, address): wait `seconds`."""

    def __init__(self, seconds: int) -> None:
        super().__init__(seconds)
        self.seconds = seconds


def _authenticate(username: str, password: str) -> User | None:
    """The user for a right password, else None; raises Throttled while the pair must wait."""
    address = request.remote_addr or ""
    wait = throttle.retry_after(username, address)
    if wait:
        raise Throttled(wait)
    user = db.session.scalar(select(User).where(User.username == username.strip()))
    ok = verify_password(user.password_hash if user else None, password)
    if ok and user is not None and user.is_active:
        throttle.record_success(username, address)
        return user
    throttle.record_failure(username, address)
    return None


@bp.route("/login", methods=["GET", "POST"])
@limiter.exempt  # throttled per (username, address) by crm_app.auth.throttle instead
def login():
    if request.method != "POST":
        return render_template("auth/login.html")
    try:
        user = _authenticate(request.form.get("username", ""), request.form.get("password", ""))
    except Throttled as exc:
        message = gettext(
            "Слишком много неудачных попыток входа. Попробуйте снова через %(wait)s.",
            wait=wait_in_words(exc.seconds),
        )
        page = render_template("auth/login.html", throttled=message)
        return page, 429, {"Retry-After": str(exc.seconds)}
    if user is None:
        return render_template("auth/login.html", error=True), 401
    start_session(user)
    return redirect(safe_next(request.args.get("next")) or url_for("pages.crm_page"))


@bp.post("/logout")
def logout():
    end_session()
    return redirect(url_for("auth.login"))


@bp.post("/logout/everywhere")
def logout_everywhere():
    """End every session of the signed-in user: other browsers, this one and its API tokens."""
    if current_user.is_authenticated:
        sign_out_everywhere(current_user._get_current_object())
    end_session()
    return redirect(url_for("auth.login"))


@bp.post("/auth/token")
@csrf.exempt
@limiter.exempt  # throttled per (username, address) by crm_app.auth.throttle instead
@spec.validate(
    json=TokenRequest,
    resp=token_responses(),
    tags=("auth",),
    security=[],
    operation_id="issue_token",
)
def token():
    """Exchange a username and password for a short-lived JWT (send it as `Bearer`)."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400, description='Send JSON {"username": ..., "password": ...}.')
    username, password = data.get("username"), data.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        abort(400, description="username and password must be strings.")
    try:
        user = _authenticate(username, password)
    except Throttled as exc:
        wait = wait_in_words(exc.seconds, locale="en")
        tired = TooManyRequests(
            description=f"Too many failed sign-ins. Try again in {wait}.",
            retry_after=exc.seconds,
        )
        # Read by the problem-document handler (errors.py) into the JSON body.
        tired.extra = {"retry_after": exc.seconds}  # type: ignore[attr-defined]
        raise tired from None
    if user is None:
        abort(401, description="Invalid username or password.")
    access_token, expires_in = issue_token(user)
    return jsonify(access_token=access_token, token_type="Bearer", expires_in=expires_in)
