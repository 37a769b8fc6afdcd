"""Blueprint placeholder: filled in by the feature that owns it."""

from flask import Blueprint

bp = Blueprint("api", __name__)
