"""`make image-check` itself: it names each step, and never passes where it could not check.

The full check needs a Docker engine and several minutes (CI runs it after this suite); these
tests run the script against stand-in `docker`/`dockerd`/`dpkg-query` commands instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "image_check.py"


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def _run(tmp_path: Path, *args: str, dpkg_version: str = "") -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    # No engine answers, and a dockerd that cannot start (as on a machine without the rights).
    _stub(bin_dir, "docker", 'echo "Cannot connect to the Docker daemon" >&2; exit 1')
    _stub(bin_dir, "dockerd", 'echo "failed to start daemon: operation not permitted" >&2; exit 1')
    _stub(bin_dir, "docker-compose", "exit 0")
    _stub(bin_dir, "mmdebstrap", "exit 0")
    versions = {
        "docker.io": "20.10.24+dfsg1-1",
        "docker-compose": "1.29.2-3",
        "mmdebstrap": "1.3.5-7",
    }
    cases = " ".join(
        f'{pkg}) echo -n "{dpkg_version or version}";;' for pkg, version in versions.items()
    )
    _stub(bin_dir, "dpkg-query", f'eval last=\\${{$#}}; case "$last" in {cases} esac')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--no-install", "--cache", str(tmp_path / "cache"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_an_engine_that_cannot_start_fails_plainly_with_exit_2(tmp_path: Path) -> None:
    proc = _run(tmp_path)
    out = proc.stdout
    assert proc.returncode == 2, out + proc.stderr
    assert "ok   tools" in out
    if os.geteuid() == 0:
        assert "dockerd could not start on this machine" in out
        assert "operation not permitted" in out  # the daemon's own reason, from its log
    else:
        assert "starting dockerd needs root" in out
    assert "FAIL engine" in out
    assert "image-check: 1 passed, 1 failed" in out.splitlines()
    assert "NOT RUN - no Docker engine could be started here" in out
    # Nothing after the engine was attempted or reported as passed.
    assert "base-python" not in out


def test_without_starting_dockerd_it_still_fails(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--no-start-dockerd")
    assert proc.returncode == 2
    assert "FAIL engine: no Docker engine answers" in proc.stdout


def test_a_tool_outside_the_pins_fails_the_tools_step(tmp_path: Path) -> None:
    proc = _run(tmp_path, dpkg_version="19.03.1")
    assert proc.returncode == 1
    assert (
        "FAIL tools: docker.io 19.03.1 is installed; the check is pinned to 20.10.*" in proc.stdout
    )
    assert "image-check: 0 passed, 1 failed" in proc.stdout.splitlines()
