"""The repository stands on its own: no paths outside it, no build notes, clean layering."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()
BINARY = (".png", ".jpg", ".ico", ".mo", ".woff", ".woff2", ".gz")

# Each pattern is split in two so this file does not match itself when read as text.
OUTSIDE = {
    "a folder beside the checkout": re.compile(r"\.\./" + r"shared"),
    "an absolute path of the build machine": re.compile(r"/wor" + r"k/"),
    "an unpublished fact sheet": re.compile(r"api-" + r"facts|facts " + "§"),
    "an unpublished interface list": re.compile(r"INTERFACES" + r"\.md"),
    "an unpublished style guide": re.compile(r"(PITFALLS|STYLE|team-" + r"brief)\.md"),
}
# How the code was built is history, not documentation.
NARRATION = re.compile(
    r"\banother engineer|\bengineers'|\bteammates?\b|\bshipped yet|\bnot shipped|another area"
    r"|\bother areas\b|helper session",
    re.IGNORECASE,
)


UNTRACKED = {".git", ".venv", "venv", "instance", "node_modules", "bench-results"}


def tracked_text_files() -> list[str]:
    """`git ls-files`; in an export without git, every file outside local-only folders."""
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
        names = out.splitlines()
    except (OSError, subprocess.CalledProcessError):
        names = [
            p.relative_to(ROOT).as_posix()
            for p in ROOT.rglob("*")
            if p.is_file()
            and not UNTRACKED & set(p.relative_to(ROOT).parts)
            and "__pycache__" not in p.parts
            and not any(part.endswith("_cache") for part in p.parts)
        ]
    names = [n for n in names if n and not n.endswith(BINARY) and n != THIS]
    return [n for n in names if (ROOT / n).is_file()]


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8", errors="replace")


def test_nothing_refers_outside_the_repository() -> None:
    found = [
        f"{name}:{number}: {what}: {line.strip()[:120]}"
        for name in tracked_text_files()
        for number, line in enumerate(read(name).splitlines(), 1)
        for what, pattern in OUTSIDE.items()
        if pattern.search(line)
    ]
    assert not found, "\n".join(found)


def test_no_notes_about_how_the_code_was_built() -> None:
    found = [
        f"{name}:{number}: {line.strip()[:120]}"
        for name in tracked_text_files()
        if not name.startswith("translations/")
        for number, line in enumerate(read(name).splitlines(), 1)
        if NARRATION.search(line)
    ]
    assert not found, "\n".join(found)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offending_imports(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / folder).rglob("*.py"))
        for name in sorted(imported_modules(path))
        if name.split(".")[0] in forbidden
    ]


def test_services_queue_tasks_by_name_only() -> None:
    """Services enqueue with `crm_app.services.queue.enqueue`; none imports the task modules."""
    assert not offending_imports("crm_app/services", ("workers",))


def test_production_code_never_imports_test_support() -> None:
    support = ("tests", "benchmarks", "testkit")
    assert not offending_imports("crm_app", support) + offending_imports("workers", support)


def test_the_checks_above_can_fail(tmp_path: Path) -> None:
    line = "see " + "../" + "shared/amocrm/samples"
    assert any(p.search(line) for p in OUTSIDE.values())
    assert NARRATION.search("a panel " + "another area" + " has not built")
    module = tmp_path / "svc.py"
    module.write_text("from workers.inbound import process_request\nimport tests.worker_tasks\n")
    assert imported_modules(module) == {"workers.inbound", "tests.worker_tasks"}
