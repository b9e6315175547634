"""The engines the backup benchmark compares, each driven by its own command line with
default settings, the way an administrator would run it.

Every engine has: a repository folder (or bucket prefix) it alone uses, a private cache
folder (restic and borg keep local caches; a fresh one per run makes runs comparable),
an unmeasured `prepare` (init), and the argument lists of the three measured steps.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from measure import FolderSize, Run, folder_size, run_quiet

ROOT = Path(__file__).resolve().parent.parent
# Benchmark repositories only: the passphrase is as public as this file.
PASSPHRASE = "reclo-benchmark-passphrase"
# Environment variables of one engine must not leak into another's runs.
_FOREIGN = ("RECLO_", "RESTIC_", "BORG_", "AWS_")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}
    env.update(extra)
    return env


class Engine:
    name = ""
    repo: Path
    repeatable = True  # all its state is under work: a copy of it runs a step again

    def __init__(self, work: Path) -> None:
        self.work = work / self.name
        self.repo = self.work / "repo"
        self.cache = self.work / "cache"
        self.logs = self.work / "logs"
        self.env: dict[str, str] = clean_env()

    def version(self) -> str:
        raise NotImplementedError

    def prepare(self) -> None:
        """Create the (empty) repository; not measured."""
        raise NotImplementedError

    def backup(self, source: Path, kind: str) -> tuple[list[str], Path]:
        """argv and working folder of a backup; kind is "full" or "incremental"."""
        raise NotImplementedError

    def restore(self, target: Path) -> tuple[list[str], Path]:
        """argv and working folder of a restore of the newest snapshot into target."""
        raise NotImplementedError

    def restored_root(self, target: Path, source: Path) -> Path:
        """Where the restore puts the source's contents."""
        raise NotImplementedError

    def repository_size(self) -> FolderSize:
        return folder_size(self.repo)

    def report(self, run: Run) -> dict:
        """What the engine itself said about a run (optional)."""
        return {}

    def close(self) -> None:
        pass


class ReClo(Engine):
    """The real `reclo-agent` against a folder repository (`--repo file:///...`): no
    server, the same archiver and packs as a server-backed backup."""

    name = "ReClo"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.config = self.work / "agent.toml"  # need not exist: the defaults plus --repo
        self.env = clean_env(RECLO_PASSPHRASE=PASSPHRASE, RECLO_AGENT_CONFIG=str(self.config))

    def agent(self, *args: str) -> list[str]:
        script = Path(sys.executable).with_name("reclo-agent")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "clients.agent"]
        return [*command, "--config", str(self.config), *self.repo_args(), *args]

    def repo_args(self) -> list[str]:
        return ["--repo", f"file://{self.repo}"]

    def version(self) -> str:
        agent = run_quiet(self.agent("--version"), env=self.env, cwd=ROOT).strip()
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "shared/format",
                                "clients/agent"], capture_output=True, text=True).stdout.strip()
        note = ", with uncommitted changes in shared/format or clients/agent" if dirty else ""
        return f"{agent} (git {commit}{note})"

    def prepare(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        # As installed: pip compiles a package's modules when it installs it. A source
        # checkout where PYTHONDONTWRITEBYTECODE is set would otherwise compile the
        # agent's modules again at every command (~0.1 s each here).
        run_quiet([sys.executable, "-m", "compileall", "-q", "shared", "clients"], env=self.env, cwd=ROOT)
        run_quiet(self.agent("init"), env=self.env, cwd=ROOT)

    def backup(self, source: Path, kind: str) -> tuple[list[str], Path]:
        return self.agent("--json", "backup", "--source", str(source), *(["--full"] if kind == "full" else [])), ROOT

    def restore(self, target: Path) -> tuple[list[str], Path]:
        return self.agent("--json", "restore", "latest", str(target)), ROOT

    def restored_root(self, target: Path, source: Path) -> Path:
        return target / source.name  # the root tree names each source by its folder's name

    def report(self, run: Run) -> dict:
        lines = [json.loads(line) for line in Path(run.stdout_path).read_text().splitlines() if line.startswith("{")]
        results = [d for d in lines if d.get("type") == "result"]
        return results[-1] if results else {}


class Restic(Engine):
    name = "restic"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.env = clean_env(RESTIC_REPOSITORY=str(self.repo), RESTIC_PASSWORD=PASSPHRASE,
                             RESTIC_CACHE_DIR=str(self.cache))

    def version(self) -> str:
        return run_quiet(["restic", "version"], env=self.env).strip()

    def prepare(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        run_quiet(["restic", "init"], env=self.env)

    def backup(self, source: Path, kind: str) -> tuple[list[str], Path]:
        # restic picks the parent by itself (same host and paths): the second run is the incremental
        return ["restic", "backup", str(source)], self.work

    def restore(self, target: Path) -> tuple[list[str], Path]:
        return ["restic", "restore", "latest", "--target", str(target)], self.work

    def restored_root(self, target: Path, source: Path) -> Path:
        return target / source.relative_to(source.anchor)  # restic recreates the absolute path

    def report(self, run: Run) -> dict:
        found = re.search(r"Added to the (?:repo|repository): (.+)", Path(run.stdout_path).read_text())
        return {"added": found.group(1).strip()} if found else {}


class Borg(Engine):
    name = "borg"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        # BORG_BASE_DIR holds borg's cache, config and security folders for this run only.
        self.env = clean_env(BORG_REPO=str(self.repo), BORG_PASSPHRASE=PASSPHRASE, BORG_BASE_DIR=str(self.cache))
        self.archives = 0

    def version(self) -> str:
        return run_quiet(["borg", "--version"], env=self.env).strip()

    def prepare(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        run_quiet(["borg", "init", "--encryption", "repokey"], env=self.env)

    def backup(self, source: Path, kind: str) -> tuple[list[str], Path]:
        # borg's files cache makes the second archive an incremental by itself
        self.archives += 1
        return ["borg", "create", f"::{self._archive(self.archives)}", str(source)], self.work

    def restore(self, target: Path) -> tuple[list[str], Path]:
        target.mkdir(parents=True, exist_ok=True)
        return ["borg", "extract", f"::{self._archive(self.archives)}"], target  # extracts into the cwd

    def restored_root(self, target: Path, source: Path) -> Path:
        return target / source.relative_to(source.anchor)

    @staticmethod
    def _archive(n: int) -> str:
        return "full" if n == 1 else f"day-{n - 1}"


ENGINES = {cls.name: cls for cls in (ReClo, Restic, Borg)}
