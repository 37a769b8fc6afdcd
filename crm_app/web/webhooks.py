"""Blueprint placeholder: filled in by the feature that owns it."""

from flask import Blueprint

bp = Blueprint("webhooks", __name__)
