"""The Dockerfile and .dockerignore, checked without a Docker engine: the stages, the
unprivileged user, the entrypoint, and a wheel built from exactly the build context the
.dockerignore leaves, which must carry every service's migrations and the `reclo` command."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from services.registry import names
from shared.settings import DEFAULT_PORTS
from tests.deploy.manifests import IMAGE_UID, REPO, service_folders

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
# Paths that must never reach the build context: history, local environments, test data.
NEVER_IN_CONTEXT = (".git/HEAD", ".venv/pyvenv.cfg", "tests/conftest.py", ".reclo/auth.db",
                    "services/__pycache__/cli.cpython-311.pyc", "reclo.egg-info/PKG-INFO")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions by stage name; ARG defaults before the first FROM substituted."""
    args: dict[str, str] = {}
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for instruction, rest in _instructions():
        if instruction == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
        for key, value in args.items():
            rest = rest.replace("${" + key + "}", value)
        if instruction == "FROM":
            image, _, name = rest.partition(" AS ")
            current = stages.setdefault(name.strip(), [("FROM", image.strip())])
        elif current is not None:
            current.append((instruction, rest))
    return stages


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern that matches the path, or one of its
    parent folders, decides; `!` re-includes; `*` never crosses a `/` (Go's filepath.Match)
    and a leading `**/` matches in any folder."""
    parts = path.split("/")
    prefixes = [parts[:i] for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern_parts = pattern.lstrip("!").split("/")
        if pattern_parts[0] == "**":
            matched = any(len(p) >= len(pattern_parts) - 1 and _segments_match(
                p[len(p) - len(pattern_parts) + 1:], pattern_parts[1:]) for p in prefixes)
        else:
            matched = any(_segments_match(p, pattern_parts) for p in prefixes)
        if matched:
            ignored = not negate
    return ignored


def _segments_match(path_parts: list[str], pattern_parts: list[str]) -> bool:
    return len(path_parts) == len(pattern_parts) and all(
        fnmatch.fnmatchcase(a, b) for a, b in zip(path_parts, pattern_parts))


def _patterns() -> list[str]:
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]


def _context(root: Path) -> list[str]:
    """The files `docker build .` would send, from the working tree."""
    patterns = _patterns()
    reincluded = [p[1:] for p in patterns if p.startswith("!")]
    files = []
    for folder, dirs, filenames in os.walk(root):
        relative = Path(folder).relative_to(root).as_posix()
        prefix = "" if relative == "." else relative + "/"
        # Skip an ignored folder unless a `!` pattern may take back something inside it.
        dirs[:] = [d for d in dirs if not _ignored(prefix + d, patterns)
                   or any(r.startswith(prefix + d + "/") for r in reincluded)]
        files.extend(prefix + name for name in filenames
                     if not _ignored(prefix + name, patterns))
    return sorted(files)


def test_two_stages_slim_runtime_unprivileged_user_and_entrypoint():
    stages = _stages()
    assert list(stages) == ["build", "runtime"]
    for stage in stages.values():
        assert stage[0][1].startswith("python:3.11-slim")
    build = " ".join(rest for _, rest in stages["build"])
    assert "pip wheel" in build and "'.[server]'" in build
    runtime = dict(stages["runtime"][::-1])  # the last of each instruction wins
    run = " ".join(rest for instruction, rest in stages["runtime"] if instruction == "RUN")
    assert re.search(r"apt-get install [^&]*\bqemu-utils\b", run)
    assert "build-essential" not in run
    assert "--mount=type=bind,from=build" in run
    user = runtime["USER"].split(":")
    assert user == [str(IMAGE_UID), str(IMAGE_UID)] and IMAGE_UID != 0
    assert json.loads(runtime["ENTRYPOINT"]) == ["reclo", "serve"]
    assert json.loads(runtime["CMD"]) == ["gateway"]
    assert {int(p) for p in runtime["EXPOSE"].split()} == set(DEFAULT_PORTS.values())


def test_the_build_context_holds_what_the_image_needs_and_nothing_else():
    context = set(_context(REPO))
    patterns = _patterns()
    for secret_or_junk in NEVER_IN_CONTEXT:
        assert _ignored(secret_or_junk, patterns), secret_or_junk
    assert "pyproject.toml" in context
    for service in service_folders():
        assert f"services/{service}/app.py" in context
    sources = [source for instruction, rest in _stages()["build"] if instruction == "COPY"
               for source in [t for t in rest.split() if not t.startswith("--")][:-1]]
    assert "README.md" in sources  # pyproject.toml names it as the readme
    for source in sources:
        assert any(p == source or p.startswith(source + "/") for p in context), source


def test_a_wheel_from_the_build_context_has_the_commands_and_every_migration(tmp_path):
    """What the image's build stage does, `pip wheel .` on the build context: a wheel
    without a service's migrations would start a container that cannot migrate."""
    source = tmp_path / "context"
    for relative in _context(REPO):
        target = source / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, target)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
         "--wheel-dir", str(tmp_path / "wheels"), str(source)],
        capture_output=True, text=True, timeout=540, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "wheels").glob("reclo-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        contents = set(archive.namelist())
        (entry_points,) = [n for n in contents if n.endswith("entry_points.txt")]
        commands = archive.read(entry_points).decode()
    assert re.search(r"^reclo = services\.cli:main$", commands, re.M)
    for service in service_folders():
        migrations = REPO / "services" / service / "migrations"
        if not migrations.is_dir():
            continue
        for path in migrations.rglob("*.py"):
            assert path.relative_to(REPO).as_posix() in contents, path
    for name in names():
        assert f"services/{name}/app.py" in contents


@pytest.mark.parametrize("path, ignored", [
    (".git/config", True), ("tests/deploy/test_image.py", True), ("docs/x.md", True),
    ("shared/settings.py", False), ("services/auth/migrations/env.py", False),
    ("shared/__pycache__/x.pyc", True), ("pyproject.toml", False), ("Dockerfile", True),
])
def test_dockerignore_rules_as_docker_reads_them(path, ignored):
    assert _ignored(path, _patterns()) is ignored
