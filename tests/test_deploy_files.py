"""The Dockerfile, docker-compose.yml, .env.example and .dockerignore, parsed and cross-checked."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("web", "worker", "beat", "migrate")
REQUIRED_SERVICES = {*APP_SERVICES, "postgres", "redis"}
# The environment variables the README documents as the deployment's interface.
INTERFACE_VARS = {
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "CRM_ENCRYPTION_KEY",
    "AMOCRM_PROXY",
    "AMOCRM_BASE_URL",
    "PUBLIC_URL",
}
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def documented_vars() -> set[str]:
    """Variable names in .env.example, set (NAME=) or shown commented out (# NAME=)."""
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, re.M))


def _command(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    lines: list[tuple[str, str]] = []
    buffer = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        instruction, _, args = buffer.partition(" ")
        lines.append((instruction.upper(), args.strip()))
        buffer = ""
    return lines


# --- docker-compose.yml -------------------------------------------------------------------------


def test_compose_has_every_service(services: dict[str, Any]) -> None:
    assert set(services) >= REQUIRED_SERVICES


def test_roles_run_the_interface_commands(services: dict[str, Any]) -> None:
    assert _command(services["web"]) == "gunicorn wsgi:app"
    assert _command(services["worker"]).startswith("celery -A workers.celery_app worker")
    assert _command(services["beat"]).startswith("celery -A workers.celery_app beat")
    assert _command(services["migrate"]) == "flask --app wsgi db upgrade"
    # One image for every role.
    images = {services[name].get("image") for name in APP_SERVICES}
    assert len(images) == 1 and None not in images
    assert all(services[name].get("build") == "." for name in APP_SERVICES)


def test_beat_runs_exactly_one_replica(services: dict[str, Any]) -> None:
    beat = services["beat"]
    assert beat["deploy"]["replicas"] == 1
    assert beat.get("scale", 1) == 1
    # Its schedule state lives on a volume, not in the read-only image.
    assert any(str(v).startswith("beatdata:") for v in beat.get("volumes", []))
    assert "--schedule=/var/lib/crm-beat/" in _command(beat)


def test_app_services_wait_for_a_successful_migration(services: dict[str, Any]) -> None:
    for name in ("web", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
    migrate = services["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "migrate" not in migrate["depends_on"]


def test_data_lives_on_named_volumes(compose: dict[str, Any], services: dict[str, Any]) -> None:
    volumes = set(compose["volumes"])
    assert {"pgdata", "redisdata", "beatdata"} <= volumes
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "redisdata:/data" in services["redis"]["volumes"]
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["redis"]


def test_only_the_web_port_is_published_and_on_loopback(services: dict[str, Any]) -> None:
    for name in ("postgres", "redis", "worker", "beat", "migrate"):
        assert "ports" not in services[name], name
    assert services["web"]["ports"] == ["${WEB_BIND:-127.0.0.1}:${WEB_PORT:-8000}:8000"]


def test_app_containers_are_locked_down(services: dict[str, Any]) -> None:
    for name in ("web", "worker", "beat"):
        service = services[name]
        assert service["read_only"] is True, name
        assert "ALL" in service["cap_drop"], name
        assert "no-new-privileges:true" in service["security_opt"], name
    # Worker and beat serve no HTTP, so the image's /healthz check must not judge them.
    assert "healthcheck" not in services["web"]  # the Dockerfile's HEALTHCHECK applies
    assert services["beat"]["healthcheck"]["test"][:4] == [
        "CMD",
        "python",
        "-m",
        "workers.healthcheck",
    ]
    assert "inspect ping" in " ".join(services["worker"]["healthcheck"]["test"])


def test_every_service_runs_as_a_non_root_user(services: dict[str, Any]) -> None:
    # The official images' data directories belong to these users; the app image sets USER.
    assert services["postgres"]["user"] == "postgres"
    assert services["redis"]["user"] == "redis"
    for name in APP_SERVICES:
        assert "user" not in services[name], name


def test_image_names_can_be_overridden_and_default_to_the_official_ones(
    services: dict[str, Any],
) -> None:
    assert services["postgres"]["image"] == "${POSTGRES_IMAGE:-postgres:16.6-alpine}"
    assert services["redis"]["image"] == "${REDIS_IMAGE:-redis:7.4-alpine}"
    assert services["web"]["image"] == "${CRM_IMAGE:-crm-amocrm:latest}"


def test_secrets_are_required_not_defaulted(services: dict[str, Any]) -> None:
    env = services["web"]["environment"]
    assert env["SECRET_KEY"].startswith("${SECRET_KEY:?")
    assert env["CRM_ENCRYPTION_KEY"].startswith("${CRM_ENCRYPTION_KEY:?")
    assert ":?" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]


def _compose_vars(compose: dict[str, Any]) -> set[str]:
    names = set(_INTERPOLATION.findall((ROOT / "docker-compose.yml").read_text()))
    for service in compose["services"].values():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            names |= {item.split("=", 1)[0] for item in environment}
        else:
            names |= set(environment)
    return names


def test_every_compose_variable_is_in_env_example(
    compose: dict[str, Any], documented_vars: set[str]
) -> None:
    names = _compose_vars(compose)
    assert {"POSTGRES_PASSWORD", "SECRET_KEY", "WEB_PORT"} <= names  # the parser sees them
    assert names - documented_vars == set()


def test_every_config_variable_is_in_env_example(documented_vars: set[str]) -> None:
    sources = [ROOT / "crm_app" / "config.py", ROOT / "gunicorn.conf.py"]
    sources += [ROOT / "crm_app" / "logging_setup.py", ROOT / "crm_app" / "security.py"]
    sources += [ROOT / "proxy" / "amocrm_proxy.py"]
    read = set()
    for source in sources:
        read |= set(
            re.findall(
                r"(?:environ\.get|getenv|environ\[|_bool|_int|_float|env)\(\s*\"([A-Z][A-Z0-9_]*)\"",
                source.read_text(),
            )
        )
    assert {
        "DATABASE_URL",
        "CELERY_QUEUE",
        "LOG_FORMAT",
        "GUNICORN_BIND",
        "AMOCRM_PROXY_ALLOW",
    } <= read
    assert (read | INTERFACE_VARS) - documented_vars == set()


def test_env_example_every_variable_has_a_comment() -> None:
    is_variable = re.compile(r"^#?\s*[A-Z][A-Z0-9_]*=")
    lines = (ROOT / ".env.example").read_text().splitlines()
    for index, line in enumerate(lines):
        if not is_variable.match(line):
            continue
        # Variables of one block share the explanation right above them.
        above = index - 1
        while above >= 0 and is_variable.match(lines[above]):
            above -= 1
        assert above >= 0 and lines[above].startswith("# "), f"no comment above {line!r}"


def test_env_example_holds_no_secret_values() -> None:
    values = dict(
        re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", (ROOT / ".env.example").read_text(), re.M)
    )
    for name in (
        "SECRET_KEY",
        "CRM_ENCRYPTION_KEY",
        "POSTGRES_PASSWORD",
    ):
        assert values.get(name, "") == "", name
    assert values["PUBLIC_URL"].startswith("https://")


# --- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_base_image_is_pinned_slim_python_311() -> None:
    lines = _dockerfile()
    args = dict(a.split("=", 1) for instruction, a in lines if instruction == "ARG" and "=" in a)
    bases = [a.split()[0] for instruction, a in lines if instruction == "FROM"]
    assert bases, "no FROM"
    for base in bases:
        image = args.get(base[2:-1], base) if base.startswith("${") else base
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?", image), image


def test_dockerfile_runs_as_non_root() -> None:
    users = [a for instruction, a in _dockerfile() if instruction == "USER"]
    assert users, "no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_dockerfile_healthcheck_and_default_command() -> None:
    lines = _dockerfile()
    health = [a for instruction, a in lines if instruction == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0]
    cmd = [a for instruction, a in lines if instruction == "CMD"][-1]
    assert json.loads(cmd) == ["gunicorn", "wsgi:app"]
    expose = [a for instruction, a in lines if instruction == "EXPOSE"]
    assert expose == ["8000"]


class _Healthz(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def healthz_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def _healthcheck_argv() -> list[str]:
    health = next(a for instruction, a in _dockerfile() if instruction == "HEALTHCHECK")
    cmd = health[health.index("CMD") + len("CMD") :].strip()
    argv = json.loads(cmd) if cmd.startswith("[") else shlex.split(cmd)
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def test_dockerfile_healthcheck_command_really_probes(healthz_server: int) -> None:
    argv = _healthcheck_argv()
    env = {**os.environ, "GUNICORN_BIND": f"0.0.0.0:{healthz_server}"}
    assert subprocess.run(argv, env=env, timeout=30, capture_output=True).returncode == 0
    # Nothing listening: the check must fail.
    with ThreadingHTTPServer(("127.0.0.1", 0), _Healthz) as spare:
        closed_port = spare.server_address[1]
    env["GUNICORN_BIND"] = f"0.0.0.0:{closed_port}"
    assert subprocess.run(argv, env=env, timeout=30, capture_output=True).returncode != 0


def test_dockerfile_copies_a_prebuilt_venv_and_ships_no_dev_requirements() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "requirements-dev" not in text
    assert "COPY --from=build /opt/venv /opt/venv" in text


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    entries = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "instance", ".env", ".env.*", "tests"} <= entries
    for needed in ("crm_app", "workers", "templates", "static", "migrations", "proxy", "wsgi.py"):
        assert needed not in entries, needed
        assert (ROOT / needed).exists(), needed


def test_gunicorn_config_loads_and_masks(tmp_path: Path) -> None:
    # gunicorn itself validates the file: unknown settings or a bad logger class fail here.
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--print-config", "wsgi:app"],
        cwd=str(ROOT),
        env={**os.environ, "CRM_INSTANCE_PATH": str(tmp_path), "GUNICORN_BIND": "127.0.0.1:0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"logger_class\s*=\s*crm_app\.logging_setup\.GunicornLogger", result.stdout)
    assert re.search(r"worker_class\s*=\s*gthread", result.stdout)
