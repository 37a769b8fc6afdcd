"""Blueprint placeholder: filled in by the feature that owns it."""

from flask import Blueprint

bp = Blueprint("pages", __name__)


@bp.get("/admin/crm")
def crm_page():  # type: ignore[no-untyped-def]
    return "CRM page is being built", 200
