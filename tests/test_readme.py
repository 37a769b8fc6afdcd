"""Every shell command of README.md runs, against `make run`'s own processes.

`scripts/run_demo.py` (what `make run` starts: SQLite, the filesystem broker, the sandbox, a
Celery worker with beat and gunicorn with two workers) runs on free ports in a temporary
instance folder. Every fenced `sh`/`bash`/`shell` block of the README is then run with bash
(`set -euo pipefail`, curl failing on HTTP errors), in README order, with the README's example
URLs replaced by the running app's and the sandbox's. Commands that cannot run here are listed in
NOT_RUNNABLE with the reason; every entry must still match a command, so the list stays honest.

How to write a README block: ```sh (or bash/shell/console) blocks are run, so their commands
must work against `make run` (use `http://127.0.0.1:5000` or `https://crm.example.com` for the
app, `http://127.0.0.1:8100` for the sandbox, owner `demo`, user admin); expected output goes in a
comment or in a block without a language. A command that cannot run here gets an entry in
NOT_RUNNABLE below.

The same processes check what the terminal of `make run` shows and that sign-in throttling is
shared by gunicorn's two workers (no Redis: the counter is in the database).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Starting make run's processes on a busy machine can take minutes.
pytestmark = pytest.mark.timeout(1200)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHELLS = {"sh", "bash", "shell", "console"}

# (regular expression matched against one command, why it cannot run in a test)
NOT_RUNNABLE: list[tuple[str, str]] = [
    (r"^make run\b", "starts these same processes and runs until Ctrl-C"),
    (r"^make test\b", "runs the test suite, this test included"),
    (r"\btelegram set-webhook\b", "calls api.telegram.org with a real bot token (no internet)"),
    (
        r"-X (?:PATCH|POST) \$BASE/admin/crm/(?:leads|tasks|contacts)\b",
        "stand for a deal the reader has seen (its id and version); tests/workspace/test_api.py "
        "sends each of these writes",
    ),
    (
        r"/api/crm/people\?",
        "needs a person the demo account already knows (tests/people runs these calls)",
    ),
]
# README text → what it stands for in the test: the app's example origins (PUBLIC_URL, make run's
# and gunicorn's default ports) and make run's sandbox.
EXAMPLE_BASE = re.compile(
    r"https://crm\.example\.com|http://(?:127\.0\.0\.1|localhost):(?:5000|8000)"
)
EXAMPLE_SANDBOX = re.compile(r"http://(?:127\.0\.0\.1|localhost):8100")
# curl exits non-zero on an HTTP error, so a README command that gets a 4xx/5xx fails the test.
PRELUDE = 'set -euo pipefail\ncurl() { command curl --fail-with-body --max-time 60 "$@"; }\n'


@dataclass
class Block:
    line: int  # where the block starts in README.md
    commands: list[str] = field(default_factory=list)


def _commands(text: str) -> list[str]:
    """Split a shell block into commands: continuation lines and open quotes join lines."""
    commands: list[str] = []
    pending = ""
    for line in text.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if pending.rstrip().endswith("\\"):
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        if pending.strip() and not pending.strip().startswith("#"):
            commands.append(pending)
        pending = ""
    if pending.strip():
        commands.append(pending)
    return commands


def readme_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    fence = re.compile(r"^```(\w*)\s*$")
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = fence.match(lines[i])
        if not match:
            i += 1
            continue
        lang, start = match.group(1).lower(), i + 1
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            i += 1
        if lang in SHELLS:
            blocks.append(Block(start, _commands("\n".join(lines[start:i]))))
        i += 1
    return blocks


def not_runnable(command: str) -> str | None:
    for pattern, reason in NOT_RUNNABLE:
        if re.search(pattern, command.strip(), re.M):
            return reason
    return None


def test_the_readme_parser_finds_every_command() -> None:
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    commands = [c for b in blocks for c in b.commands]
    assert len(blocks) >= 4 and len(commands) >= 20
    # A multi-line curl with a quoted JSON body is one command.
    assert any(c.startswith("ID=$(curl") and "| python3" in c for c in commands)
    for pattern, _reason in NOT_RUNNABLE:
        assert any(re.search(pattern, c.strip(), re.M) for c in commands), (
            f"NOT_RUNNABLE entry {pattern!r} matches no README command: remove it"
        )


# -- make run's processes -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Demo:
    base: str
    sandbox: str
    env: dict[str, str]
    instance: Path
    proc: subprocess.Popen[str]
    output: list[str]


def _collect(proc: subprocess.Popen[str], out: list[str]) -> threading.Thread:
    """Append make run's terminal output to `out`, line by line, as it comes."""

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def _wait_for(proc: subprocess.Popen[str], out: list[str], marker: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if marker in "".join(out):
            return
        if proc.poll() is not None:
            time.sleep(0.5)  # let the reader take the last lines
            break
        time.sleep(0.2)
    raise AssertionError(f"{marker!r} not printed by make run:\n{''.join(out)[-4000:]}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    instance = tmp_path_factory.mktemp("make-run")
    port, sandbox_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(
        {
            "CRM_INSTANCE_PATH": str(instance),
            "PORT": str(port),
            "SANDBOX_PORT": str(sandbox_port),
            "PYTHONUNBUFFERED": "1",
        }
    )
    for key in ("SECRET_KEY", "CRM_ENCRYPTION_KEY", "PUBLIC_URL", "AMOCRM_BASE_URL"):
        env.pop(key, None)
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/python"), "scripts/run_demo.py"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    base, sandbox = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sandbox_port}"
    command_env = env | {"PUBLIC_URL": base, "AMOCRM_BASE_URL": sandbox}
    try:
        _collect(proc, output)
        _wait_for(proc, output, "Ctrl-C stops everything", 420)
        _wait_for(proc, output, "=" * 64 + "\n\n", 5)
        yield Demo(base, sandbox, command_env, instance, proc, output)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _script(block: Block, demo: Demo) -> tuple[str, list[str]]:
    parts, skipped = [PRELUDE], []
    for command in block.commands:
        reason = not_runnable(command)
        if reason:
            skipped.append(f"{command.strip().splitlines()[0]}  ({reason})")
            continue
        command = EXAMPLE_BASE.sub(demo.base, command)
        parts.append(EXAMPLE_SANDBOX.sub(demo.sandbox, command))
    return "\n".join(parts) + "\n", skipped


def test_every_readme_command_runs(demo: Demo) -> None:
    ran = 0
    for block in readme_blocks(README.read_text(encoding="utf-8")):
        script, _skipped = _script(block, demo)
        if script == PRELUDE + "\n":
            continue
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=ROOT,
            env=demo.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, (
            f"README.md block at line {block.line} failed ({result.returncode}):\n{script}\n"
            f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
        )
        ran += 1
    assert ran >= 3


def _post_json(url: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_sign_in_throttling_is_shared_by_the_gunicorn_workers(demo: Demo) -> None:
    # Two workers without Redis: with separate counters the answers would alternate 401/429.
    codes = [
        _post_json(f"{demo.base}/auth/token", {"username": "nobody", "password": "guess"})[0]
        for _ in range(8)
    ]
    assert codes == [401] * 5 + [429] * 3
    status, body = _post_json(f"{demo.base}/auth/token", {"username": "nobody", "password": "x"})
    assert status == 429 and str(body["detail"]).endswith("Try again in 30 seconds.")


def test_the_banner_is_the_last_thing_make_run_prints(demo: Demo) -> None:
    text = "".join(demo.output)
    banner = text[text.rindex("=" * 64, 0, text.rindex("=" * 64)) :]
    assert "/admin/crm" in banner and "admin / demo-sandbox-42" in banner
    before = text[: text.index(banner)]
    # Celery's banner and warnings and the sandbox's and gunicorn's logs go to instance/logs.
    assert "celery@" not in before and "[config]" not in before and "Booting worker" not in before
    # `flask db upgrade` / `demo setup` print what they do, not alembic's plugin list.
    assert "setup plugin" not in before
    assert (demo.instance / "logs" / "worker.log").read_text().count("ready.") >= 1


def test_polling_requests_stay_out_of_the_access_log(demo: Demo) -> None:
    log = demo.instance / "logs" / "web.log"
    for headers, marker in (({}, "plain-marker"), ({"X-CRM-Poll": "1"}, "poll-marker")):
        request = urllib.request.Request(f"{demo.base}/healthz?{marker}=1", headers=headers)
        with urllib.request.urlopen(request, timeout=10):
            pass
    deadline = time.monotonic() + 10
    while "plain-marker" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    text = log.read_text()
    assert "plain-marker" in text and "poll-marker" not in text
