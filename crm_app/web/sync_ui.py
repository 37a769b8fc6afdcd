"""Blueprint placeholder: the sync controls/progress partials (owned by the sync feature)."""

from flask import Blueprint

bp = Blueprint("sync_ui", __name__)
