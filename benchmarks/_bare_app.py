"""The baseline for the webhook benchmark: a bare Flask app whose endpoint only answers 200."""

from flask import Flask

app = Flask(__name__)


@app.post("/webhooks/amocrm/<token>")
def hook(token: str) -> tuple[str, int]:
    return "OK", 200


@app.get("/healthz")
def healthz() -> tuple[str, int]:
    return "ok", 200
