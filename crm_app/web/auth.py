"""Sign-in for browsers (/login, /logout) and JWT issue for the API (/auth/token)."""

from __future__ import annotations

from flask import (
    Blueprint,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import login_user, logout_user
from sqlalchemy import select

from crm_app.auth.passwords import verify_password
from crm_app.auth.tokens import issue_token
from crm_app.extensions import csrf, db, limiter
from crm_app.models import User
from crm_app.schemas import spec
from crm_app.schemas.auth import TokenRequest, token_responses

bp = Blueprint("auth", __name__)


def _username_key() -> str:
    data = request.get_json(silent=True) if request.is_json else request.form
    # Any JSON value can arrive (a number, a list): only an object has a username.
    name = data.get("username", "") if isinstance(data, dict) else ""
    key = str(name).strip().lower()[:80]
    # A lone surrogate from JSON cannot be encoded for the limiter's storage; "?" stands in.
    return "login-user:" + key.encode("utf-8", "replace").decode("utf-8")


def _login_limit() -> str:
    return current_app.config["LOGIN_RATE_LIMIT"]


def _failed(response) -> bool:
    return response.status_code == 401


def _authenticate(username: str, password: str) -> User | None:
    user = db.session.scalar(select(User).where(User.username == username.strip()))
    ok = verify_password(user.password_hash if user else None, password)
    return user if ok and user is not None and user.is_active else None


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_login_limit, methods=["POST"], deduct_when=_failed)
@limiter.limit(_login_limit, key_func=_username_key, methods=["POST"], deduct_when=_failed)
def login():
    error = None
    if request.method == "POST":
        user = _authenticate(request.form.get("username", ""), request.form.get("password", ""))
        if user is not None:
            login_user(user)
            target = request.args.get("next", "")
            # Only same-site relative paths, so the login form is no open redirect.
            if not target.startswith("/") or target.startswith("//"):
                target = url_for("pages.crm_page")
            return redirect(target)
        error = "Неверное имя пользователя или пароль"
        return render_template("auth/login.html", error=error), 401
    return render_template("auth/login.html", error=error)


@bp.post("/logout")
def logout():
    logout_user()
    return redirect(url_for("auth.login"))


@bp.post("/auth/token")
@csrf.exempt
@limiter.limit(_login_limit, deduct_when=_failed)
@limiter.limit(_login_limit, key_func=_username_key, deduct_when=_failed)
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
    user = _authenticate(username, password)
    if user is None:
        abort(401, description="Invalid username or password.")
    access_token, expires_in = issue_token(user)
    return jsonify(access_token=access_token, token_type="Bearer", expires_in=expires_in)
