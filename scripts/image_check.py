#!/usr/bin/env python3
"""`make image-check`: build the image, run the whole compose stack, and prove it works.

Builds stand-in base images from Debian packages (mmdebstrap + `docker import`; public images
cannot be pulled here), builds the app image on them, brings `docker-compose.yml` up with
Debian's docker-compose 1.29 plus a small overlay (a sandbox service), then checks migrate/web/worker/beat,
connects to a sandbox container through a private-integration code, syncs, restarts the worker
mid-sync and tears everything down. Every step is reported by name; any failure exits 1, and an
engine that cannot start exits 2. Standard library only: it runs with the system's python3.
See docs/deployment.md, "Checking the image and the stack".
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "scripts" / "image-check"
PROJECT = "crmimagecheck"
DEFAULT_CACHE = Path(os.environ.get("IMAGE_CHECK_CACHE", "/var/cache/crm-image-check"))
DOCKERD_FLAGS = (
    "--storage-driver=vfs",
    "--iptables=false",
    "--ip6tables=false",
    "--bridge=none",
)
APP_SERVICES = ("migrate", "web", "worker", "beat")
HEALTHY_SERVICES = ("web", "worker", "beat")
ADMIN_USER = "admin"
WHEELS_PORT = int(os.environ.get("IMAGE_CHECK_WHEELS_PORT", "38717"))


class StepFailed(Exception):
    """A step's own, readable reason for failing."""


class GiveUp(StepFailed):
    """Raised by a probe of `wait_for` when waiting longer cannot help."""


class EngineUnavailable(StepFailed):
    """dockerd is not running and cannot be started here."""


def log(message: str) -> None:
    print(message, flush=True)


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = 900,
    env: dict[str, str] | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise StepFailed with its last output lines."""
    proc = subprocess.run(
        list(cmd),
        text=True,
        capture_output=capture,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        input=input_text,
        check=False,
    )
    if check and proc.returncode != 0:
        tail = "\n".join(((proc.stdout or "") + (proc.stderr or "")).strip().splitlines()[-25:])
        raise StepFailed(f"`{' '.join(cmd[:4])} …` exited {proc.returncode}\n{tail}")
    return proc


def wait_for(what: str, probe: Callable[[], Any], timeout: float, interval: float = 2.0) -> Any:
    """Call probe until it returns something truthy; StepFailed naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        try:
            result = probe()
            if result:
                return result
        except GiveUp:
            raise
        except StepFailed as exc:
            last_error = str(exc)
        if time.monotonic() > deadline:
            raise StepFailed(f"timed out after {timeout:.0f} s waiting for {what}. {last_error}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_directory(path: Path, port: int) -> ThreadingHTTPServer:
    """Serve `path` on loopback in a thread (the build's --network=host reaches it).

    A fixed port keeps the build argument, and so Docker's layer cache, the same between runs;
    a free one is taken if it is busy.
    """
    handler = functools.partial(QuietHandler, directory=str(path))
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def read_pins() -> dict[str, str]:
    pins = {}
    for line in (HERE / "pins.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pins[key.strip()] = value.strip()
    return pins


# --- HTTP --------------------------------------------------------------------------------------


def http(
    method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 15
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise StepFailed(f"{method} {url}: {exc}") from exc
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = raw.decode(errors="replace")
    return status, payload


def expect(status: int, payload: Any, wanted: int, what: str) -> Any:
    if status != wanted:
        raise StepFailed(f"{what}: HTTP {status} (expected {wanted}): {str(payload)[:500]}")
    return payload


# --- the check ---------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class Check:
    args: argparse.Namespace
    pins: dict[str, str] = field(default_factory=read_pins)
    results: list[Result] = field(default_factory=list)
    images: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    project_dir: Path | None = None
    token: str = ""
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    sandbox_counts: dict[str, int] = field(default_factory=dict)
    stack_started: bool = False

    # -- step runner --

    def step(self, name: str, fn: Callable[[], str | None]) -> None:
        log(f"\n==> {name}")
        started = time.monotonic()
        try:
            detail = fn() or ""
        except StepFailed as exc:
            self.results.append(Result(name, False, time.monotonic() - started, str(exc)))
            log(f"FAIL {name}: {exc}")
            raise
        except subprocess.TimeoutExpired as exc:
            self.results.append(Result(name, False, time.monotonic() - started, str(exc)))
            log(f"FAIL {name}: {exc}")
            raise StepFailed(str(exc)) from exc
        self.results.append(Result(name, True, time.monotonic() - started, detail))
        log(f"ok   {name} ({time.monotonic() - started:.1f} s){': ' + detail if detail else ''}")

    def summary(self) -> None:
        log("\nimage-check steps:")
        for r in self.results:
            first = r.detail.splitlines()[0] if r.detail else ""
            log(f"  {'ok  ' if r.ok else 'FAIL'} {r.name:<26} {r.seconds:7.1f} s  {first[:90]}")
        total = sum(r.seconds for r in self.results)
        passed = sum(r.ok for r in self.results)
        log(f"image-check took {total:.0f} s")
        log(f"image-check: {passed} passed, {len(self.results) - passed} failed")

    # -- tools and engine --

    def tools(self) -> str:
        wanted = {
            "docker.io": ("dockerd", self.pins["DOCKER_IO_VERSION"]),
            "docker-compose": ("docker-compose", self.pins["DOCKER_COMPOSE_VERSION"]),
            "mmdebstrap": ("mmdebstrap", self.pins["MMDEBSTRAP_VERSION"]),
        }
        missing = [pkg for pkg, (binary, _) in wanted.items() if not shutil.which(binary)]
        if missing:
            if self.args.no_install or os.geteuid() != 0:
                raise StepFailed(
                    f"missing {', '.join(missing)}; install them as root: "
                    f"apt-get install {' '.join(missing)} (or run without --no-install as root)"
                )
            log(f"installing {', '.join(missing)} from Debian's packages")
            run(["apt-get", "update", "-qq"], timeout=600)
            run(
                ["apt-get", "install", "-y", "-qq"]
                + [f"{pkg}={wanted[pkg][1]}" for pkg in missing],
                env={"DEBIAN_FRONTEND": "noninteractive"},
                timeout=900,
            )
        versions = []
        for pkg, (_, pattern) in wanted.items():
            version = run(["dpkg-query", "-W", "-f=${Version}", pkg]).stdout.strip()
            prefix = pattern.rstrip("*")
            if not version.startswith(prefix):
                raise StepFailed(f"{pkg} {version} is installed; the check is pinned to {pattern}")
            versions.append(f"{pkg} {version}")
        return ", ".join(versions)

    def engine(self) -> str:
        if self._engine_up():
            return "dockerd already running: " + self._engine_version()
        if self.args.no_start_dockerd:
            raise EngineUnavailable(
                "no Docker engine answers and --no-start-dockerd was given; start dockerd first"
            )
        if os.geteuid() != 0:
            raise EngineUnavailable("no Docker engine answers, and starting dockerd needs root")
        self.args.cache.mkdir(parents=True, exist_ok=True)
        logfile = self.args.cache / "dockerd.log"
        log(f"starting dockerd {' '.join(DOCKERD_FLAGS)} (log: {logfile})")
        with logfile.open("ab") as out:
            daemon = subprocess.Popen(
                ["dockerd", *DOCKERD_FLAGS],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def answering() -> bool:
            if daemon.poll() is not None:
                raise GiveUp(f"dockerd exited with {daemon.returncode}")
            return self._engine_up()

        try:
            wait_for("dockerd to answer", answering, timeout=60, interval=1)
        except StepFailed:
            tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-15:])
            raise EngineUnavailable(
                f"dockerd could not start on this machine, so the image cannot be checked here.\n"
                f"Last lines of {logfile}:\n{tail}"
            ) from None
        return "started dockerd: " + self._engine_version()

    def _engine_up(self) -> bool:
        return run(["docker", "info"], check=False, timeout=30).returncode == 0

    def _engine_version(self) -> str:
        return run(["docker", "version", "-f", "{{.Server.Version}}"]).stdout.strip()

    # -- stand-in bases --

    def base(self, name: str) -> str:
        """Build (or reuse) one stand-in base image; tags and tarballs carry a hash of the recipe.

        The Debian tree (mmdebstrap, the slow part) is cached as a tarball keyed by the suite,
        packages and hooks; the entrypoint and CA bundle are added when importing, so editing
        them costs an import, not a new tree.
        """
        suite = self.pins["DEBIAN_SUITE"]
        packages = self.pins[f"{name.upper()}_BASE_PACKAGES"]
        recipe = BASES[name]
        extra = self._base_files(name)
        tree_key = hashlib.sha256(
            json.dumps([suite, packages, recipe["essential"], recipe["customize"]]).encode()
        ).hexdigest()[:12]
        image_key = hashlib.sha256(
            json.dumps([tree_key, recipe["changes"]]).encode()
            + b"".join(path.encode() + data for path, (data, _) in sorted(extra.items()))
        ).hexdigest()[:12]
        tag = f"crm-stand-in/{name}:{suite}-{image_key}"
        self.images[name] = tag
        if run(["docker", "image", "inspect", tag], check=False).returncode == 0:
            return f"{tag} (image cached)"
        tarball = self.args.cache / "bases" / f"{name}-{suite}-{tree_key}.tar"
        how = "tree cached"
        if not tarball.is_file():
            tarball.parent.mkdir(parents=True, exist_ok=True)
            partial = tarball.with_name(tarball.stem + ".partial.tar")
            run(
                [
                    "mmdebstrap",
                    "--quiet",
                    "--variant=minbase",
                    "--format=tar",
                    f"--include={packages}",
                    "--dpkgopt=path-exclude=/usr/share/doc/*",
                    "--dpkgopt=path-exclude=/usr/share/man/*",
                    "--dpkgopt=path-exclude=/usr/share/locale/*",
                    "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*",
                    *(f"--essential-hook={hook}" for hook in recipe["essential"]),
                    *(f"--customize-hook={hook}" for hook in recipe["customize"]),
                    suite,
                    str(partial),
                ],
                timeout=900,
            )
            partial.rename(tarball)
            how = "tree built with mmdebstrap"
        with tempfile.TemporaryDirectory(dir=tarball.parent) as tmp:
            image_tar = Path(tmp) / "image.tar"
            replaced = {path.lstrip("/") for path in extra}
            with (
                tarfile.open(tarball) as src,
                tarfile.open(image_tar, "w", format=src.format) as tar,
            ):
                for member in src:
                    if os.path.normpath(member.name).lstrip("/") in replaced:
                        continue  # `docker import` refuses a path twice
                    tar.addfile(member, src.extractfile(member) if member.isfile() else None)
                for path, (data, mode) in extra.items():
                    info = tarfile.TarInfo(path.lstrip("/"))
                    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
                    tar.addfile(info, io.BytesIO(data))
            changes: list[str] = []
            for change in recipe["changes"]:
                changes += ["--change", change]
            run(["docker", "import", *changes, str(image_tar), tag], timeout=600)
        return f"{tag} ({how}, imported)"

    def _base_files(self, name: str) -> dict[str, tuple[bytes, int]]:
        """Files added to a base at import: path -> (content, mode)."""
        if name == "python":
            ca_bundle = Path(self.args.ca_bundle)
            if not ca_bundle.is_file():
                raise StepFailed(f"CA bundle {ca_bundle} not found (--ca-bundle)")
            # pip inside `docker build` reaches the package registry with the machine's CA bundle.
            return {
                "/etc/ssl/certs/build-ca.pem": (ca_bundle.read_bytes(), 0o644),
                "/etc/pip.conf": (b"[global]\ncert = /etc/ssl/certs/build-ca.pem\n", 0o644),
            }
        entrypoint = HERE / f"{name}-entrypoint.sh"
        return {"/usr/local/bin/docker-entrypoint.sh": (entrypoint.read_bytes(), 0o755)}

    # -- the app image --

    def wheels(self) -> str:
        """Fill the wheel cache for requirements.txt on the host (same Debian, same CPython)."""
        wheels = self.args.cache / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        requirements = (ROOT / "requirements.txt").read_bytes()
        stamp = wheels / f".complete-{hashlib.sha256(requirements).hexdigest()[:16]}"
        before = {p.name for p in wheels.glob("*.whl")}
        if stamp.is_file():
            return f"{len(before)} wheels in {wheels} (complete for this requirements.txt)"
        # In the python base itself: environment markers (python_full_version) must match.
        script = (
            "python -m venv /tmp/venv && /tmp/venv/bin/pip install --quiet --upgrade wheel && "
            "/tmp/venv/bin/pip wheel --quiet --find-links /wheels --wheel-dir /wheels "
            "--requirement /src/requirements.txt"
        )
        run(
            [
                "docker",
                "run",
                "--rm",
                "--network=host",
                "--volume",
                f"{wheels}:/wheels",
                "--volume",
                f"{ROOT / 'requirements.txt'}:/src/requirements.txt:ro",
                self.images["python"],
                "sh",
                "-c",
                script,
            ],
            timeout=900,
        )
        after = {p.name for p in wheels.glob("*.whl")}
        stamp.touch()
        return f"{len(after)} wheels in {wheels}, {len(after - before)} new"

    def app_image(self) -> str:
        tag = self.args.app_tag
        self.images["app"] = tag
        if self.args.no_build:
            run(["docker", "image", "inspect", tag])
            return f"{tag} as it is (--no-build)"
        server = serve_directory(self.args.cache / "wheels", WHEELS_PORT)
        try:
            return self._build(tag, f"http://127.0.0.1:{server.server_address[1]}/")
        finally:
            server.shutdown()
            server.server_close()

    def _build(self, tag: str, wheels_url: str) -> str:
        cmd = [
            "docker",
            "build",
            "--network=host",
            "--build-arg",
            f"PYTHON_IMAGE={self.images['python']}",
            "--build-arg",
            f"WHEELS_URL={wheels_url}",
            "--file",
            str(self.args.dockerfile),
            "--tag",
            tag,
            str(ROOT),
        ]
        started = time.monotonic()
        # The classic builder: BuildKit would try to pull the `# syntax=` frontend image.
        proc = run(cmd, env={"DOCKER_BUILDKIT": "0"}, timeout=1800)
        cached = proc.stdout.count("Using cache")
        user = run(["docker", "image", "inspect", "-f", "{{.Config.User}}", tag]).stdout.strip()
        if not user or user.split(":")[0] in {"0", "root"}:
            raise StepFailed(f"the image runs as {user or 'root'}; it must name a non-root USER")
        return f"{tag}, USER {user}, {cached} cached layers, {time.monotonic() - started:.0f} s"

    # -- compose --

    def compose(self, *args: str, check: bool = True, timeout: float = 600, capture: bool = True):
        assert self.project_dir is not None
        return run(
            [
                "docker-compose",
                "--project-name",
                PROJECT,
                "--project-directory",
                str(self.project_dir),
                "--file",
                str(self.args.compose_file),
                "--file",
                str(HERE / "compose.check.yml"),
                *args,
            ],
            check=check,
            timeout=timeout,
            capture=capture,
            # With the vfs storage driver creating a container copies its whole image: slow.
            env={"COMPOSE_HTTP_TIMEOUT": "600", "DOCKER_CLIENT_TIMEOUT": "600"},
        )

    def write_env(self) -> str:
        """The check's own .env (the compose file's env_file and interpolation), in a temp dir."""
        self.project_dir = Path(tempfile.mkdtemp(prefix="crm-image-check-"))
        for name in ("web", "sandbox"):
            self.ports[name] = free_port()
        values = {
            "CRM_IMAGE": self.images["app"],
            "POSTGRES_IMAGE": self.images["postgres"],
            "REDIS_IMAGE": self.images["redis"],
            "POSTGRES_PASSWORD": secrets.token_urlsafe(18),
            "SECRET_KEY": secrets.token_urlsafe(48),
            "CRM_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "WEB_PORT": str(self.ports["web"]),
            "CHECK_SANDBOX_PORT": str(self.ports["sandbox"]),
            # Inside the compose network, as amoCRM's webhooks would reach a deployment.
            "PUBLIC_URL": "http://web:8000",
            "AMOCRM_BASE_URL": "http://sandbox:8100",
            "LOG_FORMAT": "text",
            # A worker killed mid-run is taken over quickly, and the beat re-queues it soon.
            "SYNC_STALE_SECONDS": "20",
            "SYNC_INTERVAL_SECONDS": "15",
            # Slow enough that the worker restart lands in the middle of a run.
            "AMOCRM_RATE_LIMIT": str(self.args.rate_limit),
        }
        (self.project_dir / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        self.compose("config", "--quiet")
        return f"{self.project_dir}/.env; ports " + ", ".join(
            f"{k} {v}" for k, v in self.ports.items()
        )

    def container_ids(self, service: str, all_states: bool = True) -> list[str]:
        args = ["ps", "-q"] + (["-a"] if all_states else []) + [service]
        # docker-compose 1.29 has no `ps -a`; list stopped ones via docker itself.
        filters = [
            "--filter",
            f"label=com.docker.compose.project={PROJECT}",
            "--filter",
            f"label=com.docker.compose.service={service}",
        ]
        del args
        out = run(["docker", "ps", "-q", *(["-a"] if all_states else []), *filters]).stdout
        return out.split()

    def inspect(self, container: str) -> dict[str, Any]:
        return json.loads(run(["docker", "inspect", container]).stdout)[0]

    def up(self) -> str:
        self.stack_started = True
        self.compose("up", "--detach", "--no-build", timeout=900)
        return "docker-compose up -d"

    def migrate_once(self) -> str:
        def finished() -> dict[str, Any] | None:
            ids = self.container_ids("migrate")
            if not ids:
                return None
            info = self.inspect(ids[0])
            return info if info["State"]["Status"] == "exited" else None

        info = wait_for("migrate to exit", finished, timeout=180)
        ids = self.container_ids("migrate")
        if len(ids) != 1:
            raise StepFailed(f"{len(ids)} migrate containers, expected exactly 1")
        code = info["State"]["ExitCode"]
        restarts = info["RestartCount"]
        if code != 0:
            logs = run(["docker", "logs", "--tail", "30", ids[0]], check=False)
            raise StepFailed(f"migrate exited {code}\n{logs.stdout}{logs.stderr}")
        if restarts:
            raise StepFailed(f"migrate ran {restarts + 1} times")
        return "exited 0, ran once"

    def healthy(self) -> str:
        def states() -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for service in HEALTHY_SERVICES:
                out[service] = [
                    self.inspect(c)["State"].get("Health", {}).get("Status", "none")
                    for c in self.container_ids(service, all_states=False)
                ]
            return out

        def all_healthy() -> bool:
            current = states()
            for service, health in current.items():
                if health != ["healthy"]:
                    if any(h == "unhealthy" for h in health):
                        raise GiveUp(f"{service} is unhealthy\n{self._logs(service)}")
                    return False
            return True

        try:
            wait_for("web, worker and beat to be healthy", all_healthy, timeout=240, interval=3)
        except StepFailed as exc:
            detail = "; ".join(f"{s}: {h or ['not running']}" for s, h in states().items())
            raise StepFailed(f"{exc}\nstates: {detail}") from None
        beats = self.container_ids("beat")
        if len(beats) != 1:
            raise StepFailed(f"{len(beats)} beat containers, expected exactly 1")
        return "web, worker, beat healthy; exactly one beat"

    def _logs(self, service: str) -> str:
        proc = self.compose("logs", "--no-color", "--tail=25", service, check=False)
        return (proc.stdout or "") + (proc.stderr or "")

    def non_root(self) -> str:
        ids = run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"]
        ).stdout.split()
        seen: dict[str, str] = {}
        for cid in ids:
            info = self.inspect(cid)
            name = info["Config"]["Labels"].get("com.docker.compose.service", cid)
            user = info["Config"].get("User") or "root"
            if user.split(":")[0] in {"0", "root"}:
                raise StepFailed(f"{name} is configured to run as {user}")
            if info["State"]["Running"]:
                top = run(["docker", "top", cid, "-eo", "uid,pid,comm"]).stdout.splitlines()[1:]
                as_root = [line for line in top if line.split()[0] in {"0", "root"}]
                if as_root:
                    raise StepFailed(f"{name} has processes running as root: {as_root}")
            seen[name] = user
        expected = {"postgres", "redis", "sandbox", *APP_SERVICES}
        if set(seen) != expected:
            raise StepFailed(f"containers {sorted(seen)}, expected {sorted(expected)}")
        return ", ".join(f"{k}={v}" for k, v in sorted(seen.items()))

    def volumes_writable(self) -> str:
        """Each named volume is writable by its container's (non-root) user."""
        checked = []
        for cid in run(
            ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"]
        ).stdout.split():
            info = self.inspect(cid)
            name = info["Config"]["Labels"].get("com.docker.compose.service", cid)
            for mount in info["Mounts"]:
                if mount["Type"] != "volume":
                    continue
                target = mount["Destination"]
                if run(["docker", "exec", cid, "test", "-w", target], check=False).returncode:
                    raise StepFailed(f"{name}: {target} is not writable by its user")
                checked.append(f"{name}:{target}")
        if not checked:
            raise StepFailed("no named volumes found")
        return ", ".join(sorted(checked))

    def web_serves(self) -> str:
        base = self.web_url
        for path, wanted in (("/healthz", 200), ("/readyz", 200), ("/login", 200)):
            status, body = http("GET", base + path)
            expect(status, body, wanted, f"GET {path}")
        return "/healthz, /readyz, /login answer 200"

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['web']}"

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['sandbox']}"

    def admin(self) -> str:
        proc = self.compose(
            "exec",
            "-T",
            "web",
            "flask",
            "--app",
            "wsgi",
            "users",
            "create",
            ADMIN_USER,
            "--role",
            "admin",
            "--password",
            self.admin_password,
        )
        status, body = http(
            "POST",
            self.web_url + "/auth/token",
            {"username": ADMIN_USER, "password": self.admin_password},
        )
        self.token = expect(status, body, 200, "POST /auth/token")["access_token"]
        return proc.stdout.strip().splitlines()[-1] + "; signed in over the API"

    def connect(self) -> str:
        status, info = http("GET", self.sandbox_url + "/_sandbox/")
        info = expect(status, info, 200, "GET sandbox /_sandbox/")
        account = info["accounts"][0]
        self.sandbox_counts = {k: int(account["counts"][k]) for k in ("contacts", "leads", "tasks")}
        integration = info["integrations"][0]
        settings = {
            "subdomain": account["subdomain"],
            "client_id": integration["client_id"],
            "client_secret": integration["client_secret"],
            "redirect_uri": integration["redirect_uri"],
        }
        status, body = http("PUT", self.web_url + "/admin/crm/config", settings, self.token)
        expect(status, body, 200, "PUT /admin/crm/config (settings)")
        status, code = http(
            "POST",
            self.sandbox_url + "/_sandbox/auth-code",
            {"client_id": integration["client_id"], "account": account["subdomain"]},
        )
        code = expect(status, code, 200, "POST sandbox /_sandbox/auth-code")["code"]
        status, body = http(
            "PUT", self.web_url + "/admin/crm/config", {"authorization_code": code}, self.token
        )
        expect(status, body, 200, "PUT /admin/crm/config (authorization_code)")
        status, body = http("GET", self.web_url + "/admin/crm/status", token=self.token)
        if expect(status, body, 200, "GET /admin/crm/status").get("status") != "connected":
            raise StepFailed(f"status after the code exchange: {body}")
        return f"connected to {account['subdomain']} (account {account['id']}) with a private code"

    def start_full_sync(self) -> dict[str, Any]:
        status, run_ = http("POST", self.web_url + "/admin/crm/sync", {"full": True}, self.token)
        return expect(status, run_, 202, "POST /admin/crm/sync")

    def poll_run(self, run_id: int) -> dict[str, Any]:
        status, body = http("GET", f"{self.web_url}/admin/crm/sync/runs/{run_id}", token=self.token)
        return expect(status, body, 200, f"GET /admin/crm/sync/runs/{run_id}")

    def wait_run(self, run_id: int, timeout: float) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            body = self.poll_run(run_id)
            if body["status"] in {"error", "cancelled"}:
                raise GiveUp(f"run {run_id} ended {body['status']}: {body.get('error')}")
            return body if body["status"] == "success" else None

        return wait_for(f"sync run {run_id} to succeed", done, timeout=timeout, interval=2)

    def counts_match(self) -> str:
        status, stats = http("GET", self.web_url + "/admin/crm/stats", token=self.token)
        stats = expect(status, stats, 200, "GET /admin/crm/stats")
        mirrored = {k: int(stats[f"{k}_count"]) for k in ("contacts", "leads", "tasks")}
        if mirrored != self.sandbox_counts:
            raise StepFailed(f"mirror {mirrored} != sandbox {self.sandbox_counts}")
        return ", ".join(f"{k} {v}" for k, v in mirrored.items())

    def full_sync(self) -> str:
        # Connecting may already have queued a first run; POST returns that one while it is active.
        run_id = self.start_full_sync()["run_id"]
        body = self.wait_run(run_id, timeout=300)
        if not body.get("full") and body.get("trigger") != "connect":
            raise StepFailed(f"run {run_id} was not a full sync: {body}")
        if body["status"] == "success" and self.poll_run(run_id)["trigger"] == "connect":
            # The connect's run finished first: run a full one of our own too.
            run_id = self.start_full_sync()["run_id"]
            body = self.wait_run(run_id, timeout=300)
        return f"run {run_id}: {body['records']} records, {body['pages']} pages; " + (
            self.counts_match()
        )

    def restart_worker(self) -> str:
        run_id = self.start_full_sync()["run_id"]

        def midway() -> dict[str, Any] | None:
            body = self.poll_run(run_id)
            if body["status"] == "success":
                raise GiveUp(f"run {run_id} finished before the worker could be restarted")
            return body if body["status"] == "running" and body["pages"] >= 2 else None

        before = wait_for(f"run {run_id} to be under way", midway, timeout=120, interval=0.5)
        started = time.monotonic()
        self.compose("restart", "worker", timeout=120)
        after_restart = self.poll_run(run_id)
        body = self.wait_run(run_id, timeout=300)
        return (
            f"run {run_id} restarted at {before['pages']} pages (status after the restart: "
            f"{after_restart['status']}), finished {body['status']} "
            f"{time.monotonic() - started:.0f} s later; " + self.counts_match()
        )

    def down(self) -> str:
        self.compose("down", "--volumes", "--remove-orphans", timeout=300)
        self.stack_started = False
        left = run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"]
        ).stdout.split()
        volumes = run(
            [
                "docker",
                "volume",
                "ls",
                "-q",
                "--filter",
                f"label=com.docker.compose.project={PROJECT}",
            ]
        ).stdout.split()
        if left or volumes:
            raise StepFailed(f"left behind: containers {left}, volumes {volumes}")
        return "no containers, no volumes left"

    def teardown_after_failure(self) -> None:
        if not self.stack_started or self.project_dir is None:
            return
        log("\n--- logs of the stack (last 40 lines per service) ---")
        proc = self.compose("logs", "--no-color", "--tail=40", check=False, timeout=120)
        log((proc.stdout or "") + (proc.stderr or ""))
        if self.args.keep:
            log(f"--keep: the stack is left running (project {PROJECT}, dir {self.project_dir})")
            return
        self.compose("down", "--volumes", "--remove-orphans", check=False, timeout=300)


class Background:
    """Work started early in a thread; the step that needs it waits for it."""

    def __init__(self, fn: Callable[[], str]) -> None:
        self.started = time.monotonic()
        self.seconds = 0.0
        self.result = ""
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], str]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:  # handed to the waiting step
            self.error = exc
        self.seconds = time.monotonic() - self.started

    def wait(self) -> str:
        self.thread.join()
        if isinstance(self.error, StepFailed):
            raise self.error
        if self.error is not None:
            raise StepFailed(f"{type(self.error).__name__}: {self.error}")
        return f"{self.result}; {self.seconds:.0f} s in the background"


# How each stand-in base is made: mmdebstrap hooks, then `docker import --change` lines.
BASES: dict[str, dict[str, list[str]]] = {
    "python": {
        "essential": [],
        "customize": ['ln -sf python3 "$1/usr/bin/python"'],
        "changes": [
            "ENV LANG=C.UTF-8",
            'CMD ["python3"]',
        ],
    },
    "postgres": {
        # Only the server: no cluster of the package's own.
        "essential": [
            'mkdir -p "$1/etc/postgresql-common/createcluster.d"',
            'echo "create_main_cluster = false" > "$1/etc/postgresql-common/createcluster.d/check.conf"',
        ],
        "customize": [
            'chroot "$1" install -d -o postgres -g postgres -m 700 /var/lib/postgresql/data',
        ],
        "changes": [
            "ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV PGDATA=/var/lib/postgresql/data",
            # The socket's directory: /run is emptied in the tree, and /tmp is the postgres user's.
            "ENV PGHOST=/tmp",
            "ENV LANG=C.UTF-8",
            "USER postgres",
            "VOLUME /var/lib/postgresql/data",
            'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]',
            'CMD ["postgres"]',
        ],
    },
    "redis": {
        "essential": [],
        "customize": [
            'chroot "$1" install -d -o redis -g redis -m 750 /data',
        ],
        "changes": [
            "USER redis",
            "WORKDIR /data",
            "VOLUME /data",
            'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]',
            'CMD ["redis-server"]',
        ],
    },
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/image_check.py", description=__doc__.split("\n")[0])
    p.add_argument("--compose-file", type=Path, default=ROOT / "docker-compose.yml")
    p.add_argument("--dockerfile", type=Path, default=ROOT / "Dockerfile")
    p.add_argument("--app-tag", default="crm-amocrm:image-check")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="base tarballs, dockerd log")
    p.add_argument(
        "--ca-bundle",
        default=os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt",
        help="CA bundle pip uses inside the build (the machine's)",
    )
    p.add_argument("--rate-limit", type=float, default=2, help="AMOCRM_RATE_LIMIT for the stack")
    p.add_argument("--no-install", action="store_true", help="never apt-get install the tools")
    p.add_argument("--no-start-dockerd", action="store_true", help="fail if no engine answers")
    p.add_argument("--no-build", action="store_true", help="use the app image already built")
    p.add_argument("--keep", action="store_true", help="leave the stack up after a failure")
    p.add_argument(
        "--only",
        choices=["engine", "bases", "image"],
        help="stop after this stage (no stack)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.compose_file = args.compose_file.resolve()
    args.dockerfile = args.dockerfile.resolve()
    check = Check(args)
    background: dict[str, Background] = {}

    def bases() -> str:
        # PostgreSQL and Redis are only needed at stack-up: build them while the app image builds.
        for name in ("postgres", "redis"):
            background[name] = Background(functools.partial(check.base, name))
        return check.base("python")

    plan: list[tuple[str, Callable[[], str | None]]] = [
        ("tools", check.tools),
        ("engine", check.engine),
        ("base-python", bases),
        ("wheels", lambda: "skipped (--no-build)" if args.no_build else check.wheels()),
        ("app-image", check.app_image),
        ("base-postgres", lambda: background["postgres"].wait()),
        ("base-redis", lambda: background["redis"].wait()),
        ("compose-config", check.write_env),
        ("stack-up", check.up),
        ("migrate-once", check.migrate_once),
        ("healthy", check.healthy),
        ("non-root", check.non_root),
        ("volumes-writable", check.volumes_writable),
        ("web-serves", check.web_serves),
        ("admin-cli", check.admin),
        ("connect-private-code", check.connect),
        ("full-sync", check.full_sync),
        ("worker-restart-mid-sync", check.restart_worker),
        ("down", check.down),
    ]
    if args.only == "bases":
        plan = [step for step in plan if step[0] not in {"wheels", "app-image"}]
    stop_after = {"engine": "engine", "bases": "base-redis", "image": "base-redis"}.get(
        args.only or ""
    )
    code = 0
    try:
        for name, fn in plan:
            check.step(name, fn)
            if name == stop_after:
                break
    except EngineUnavailable:
        code = 2
    except StepFailed:
        code = 1
        check.teardown_after_failure()
    except KeyboardInterrupt:
        code = 130
        check.teardown_after_failure()
    finally:
        if check.project_dir is not None and not (code and args.keep):
            shutil.rmtree(check.project_dir, ignore_errors=True)
    check.summary()
    if code == 2:
        log("image-check: NOT RUN - no Docker engine could be started here (see above)")
    return code


if __name__ == "__main__":
    sys.exit(main())
