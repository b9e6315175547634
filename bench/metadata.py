"""Metadata scale (issue 8): how long, and with how much memory, ReClo and restic take to
back up a million tiny files, and above all to find out that nothing changed.

    python bench/metadata.py                        # tree, full backups, incrementals
    python bench/metadata.py --skip-full            # only the incrementals, against the
                                                    # repositories of an earlier run
    python bench/metadata.py --at-commit HEAD       # run the agent of a commit, not the
                                                    # working tree (others' edits stay out)

Steps, each for every engine in turn: a full backup (unless --skip-full), the incremental
with nothing changed (--repeat times), then the incremental after rewriting one file in
each of --touched folders, then (with --restore) a restore of the latest snapshot into an
empty folder as on a new machine: what each engine keeps beside its repository (ReClo's
index cache and on-disk index, restic's cache) is deleted and the kernel's caches dropped
first (needs root; the row's "cold" says whether they were), and the restored files are
counted afterwards. With --skip-full, an engine whose repository is behind the tree (the
files were touched after its last backup) first backs up once, unmeasured. Each step is
one child process; its wall time and peak RSS (ru_maxrss from wait4) are measured, the
1-minute load is read just before it starts. For the backups the page cache stays warm:
the tree is stat'ed once before the first step and not dropped before a backup, so their
figures show CPU and metadata work, not the disk.

The tree (default 1,000 folders x 1,000 files of ~13 bytes) is created on the first run
and reused: a marker file beside it records its shape. Everything the engines keep
(repositories, ReClo's config, state and secrets, restic's cache) lives under --work, so
nothing comes from or goes to the home folder, and --skip-full can reuse it later.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from measure import MiB, Run, machine, run_measured, run_quiet

ROOT = Path(__file__).resolve().parent.parent
# Benchmark repositories only: the passphrase is as public as this file.
PASSPHRASE = "reclo-benchmark-passphrase"
# Environment variables of one engine must not leak into another's runs.
_FOREIGN = ("RECLO_", "RESTIC_", "BORG_", "AWS_")
FULL, UNCHANGED, TOUCHED = "full", "incremental, unchanged", "incremental, {n} files changed"
RESTORE = "restore on a new machine"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}
    env.update(extra)
    return env


# --- the tree -----------------------------------------------------------------------------------


def marker_of(tree: Path) -> Path:
    # Beside the tree, not in it: the backups must see exactly the files of the shape.
    return tree.with_name(tree.name + ".shape.json")


def ensure_tree(tree: Path, dirs: int, files_per_dir: int) -> str:
    """Create the tree unless a complete one of this shape is there; say which."""
    shape = {"dirs": dirs, "files_per_dir": files_per_dir}
    marker = marker_of(tree)
    if marker.exists() and tree.is_dir():
        recorded = json.loads(marker.read_text())
        if {k: recorded.get(k) for k in shape} == shape:
            return "reused"
        shutil.rmtree(tree)  # ours (the marker says so), of another shape
        marker.unlink()
    elif tree.exists() and any(tree.iterdir()):
        raise SystemExit(f"{tree} exists without {marker.name}: not a tree this script made; "
                         "remove it or pass another --tree")
    # Built under another name and renamed at the end, so an interrupted run never leaves
    # a half tree that looks complete.
    partial = tree.with_name(tree.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    started = time.perf_counter()
    for d in range(dirs):
        folder = partial / f"d{d:04d}"
        folder.mkdir(parents=True)
        for f in range(files_per_dir):
            with open(folder / f"f{f:04d}", "w") as out:
                out.write(f"file {f} in dir {d}\n")
    if tree.exists():
        tree.rmdir()  # empty, checked above
    partial.rename(tree)
    marker.write_text(json.dumps({**shape, "edits": 0}) + "\n")
    return f"created in {time.perf_counter() - started:.0f} s"


def warm_cache(tree: Path) -> int:
    """Stat every entry once, so the first measured step does not pay for cold inodes."""
    count = 0
    for dirpath, _, filenames in os.walk(tree):
        for name in filenames:
            os.lstat(os.path.join(dirpath, name))
            count += 1
    return count


def tree_edits(tree: Path) -> int:
    """How many times touch_files changed the tree: an engine whose last backup saw fewer
    is behind, and its next "unchanged" incremental would not be one."""
    return json.loads(marker_of(tree).read_text()).get("edits", 0)


def touch_files(tree: Path, folders: int) -> list[str]:
    """Rewrite the first file of `folders` folders spread over the tree (new bytes, new
    mtime and size), the "a few files changed" case."""
    names = sorted(p.name for p in os.scandir(tree) if p.is_dir())
    if not names or folders <= 0:
        return []
    marker = marker_of(tree)
    recorded = json.loads(marker.read_text())
    recorded["edits"] = recorded.get("edits", 0) + 1
    marker.write_text(json.dumps(recorded) + "\n")  # before the edit: a crash leaves engines "behind", never "current"
    step = max(1, len(names) // folders)
    changed = []
    for name in names[::step][:folders]:
        path = tree / name / "f0000"
        with open(path, "w") as out:
            out.write(f"file 0 in dir {name}, changed at {time.time_ns()}\n")
        changed.append(str(path))
    return changed


# --- the engines --------------------------------------------------------------------------------


class Engine:
    name = ""

    def __init__(self, work: Path) -> None:
        self.work = work / self.name
        self.repo = self.work / "repo"
        self.logs = self.work / "logs"
        self.env = clean_env()

    def exists(self) -> bool:
        return self.repo.is_dir()

    @property
    def _seen_file(self) -> Path:
        return self.work / "tree-edits-seen"

    def seen_edits(self) -> int | None:
        """The tree's edit count at this engine's last backup (None: unknown)."""
        try:
            return int(self._seen_file.read_text())
        except (OSError, ValueError):
            return None

    def saw(self, edits: int) -> None:
        self._seen_file.write_text(f"{edits}\n")

    def fresh(self) -> None:
        """Drop whatever an earlier run kept and create an empty repository (not measured)."""
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self.init()

    def init(self) -> None:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def backup(self, tree: Path, full: bool) -> list[str]:
        raise NotImplementedError

    def restore(self, into: Path) -> list[str]:
        """The command restoring the latest snapshot; the restored tree lands somewhere
        under `into` (restored_root finds it)."""
        raise NotImplementedError

    def forget_caches(self) -> None:
        """Delete what this engine keeps beside its repository: a restore on a new machine."""
        raise NotImplementedError


class ReClo(Engine):
    """The real `reclo-agent` against a folder repository: no server, the same archiver
    and packs as a server-backed backup. Its config, secrets and state (the parent
    snapshot it compares with) are all under the work folder."""

    name = "reclo"

    def __init__(self, work: Path, code: Path) -> None:
        super().__init__(work)
        self.code = code
        self.config = self.work / "agent.toml"  # need not exist: the defaults plus --repo
        # PYTHONPATH first on sys.path: the agent of `code` wins over the editable install.
        self.env = clean_env(RECLO_PASSPHRASE=PASSPHRASE, RECLO_AGENT_CONFIG=str(self.config),
                             PYTHONPATH=str(code))

    def agent(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "clients.agent", "--config", str(self.config),
                "--repo", f"file://{self.repo}", *args]

    def init(self) -> None:
        run_quiet(self.agent("init"), env=self.env, cwd=self.code)

    def version(self) -> str:
        return run_quiet(self.agent("--version"), env=self.env, cwd=self.code).strip()

    def backup(self, tree: Path, full: bool) -> list[str]:
        return self.agent("--json", "backup", "--source", str(tree), *(["--full"] if full else []))

    def restore(self, into: Path) -> list[str]:
        return self.agent("--json", "restore", "latest", str(into))

    def forget_caches(self) -> None:
        # The backups' index cache: a new machine has none. (The restore builds its own
        # index from the repository's index files either way, restore_index.py.)
        shutil.rmtree(self.work / "state" / "index-cache", ignore_errors=True)

    def summary(self, run: Run) -> dict:
        for line in reversed(Path(run.stdout_path).read_text().splitlines()):
            if line.startswith("{") and json.loads(line).get("type") == "result":
                result = json.loads(line)
                return {k: result.get(k) for k in ("kind", "files", "dirs", "bytes_read", "stored_bytes",
                                                   "duration_seconds")}
        return {}


class Restic(Engine):
    """Debian's restic with default settings; it picks the parent snapshot by itself
    (same host and paths), so the second `restic backup` is the incremental."""

    name = "restic"

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.env = clean_env(RESTIC_REPOSITORY=str(self.repo), RESTIC_PASSWORD=PASSPHRASE,
                             RESTIC_CACHE_DIR=str(self.work / "cache"))

    def init(self) -> None:
        run_quiet(["restic", "init"], env=self.env)

    def version(self) -> str:
        return run_quiet(["restic", "version"], env=self.env).strip()

    def backup(self, tree: Path, full: bool) -> list[str]:
        return ["restic", "backup", str(tree)]

    def restore(self, into: Path) -> list[str]:
        return ["restic", "restore", "latest", "--target", str(into)]

    def forget_caches(self) -> None:
        shutil.rmtree(self.work / "cache", ignore_errors=True)

    def summary(self, run: Run) -> dict:
        lines = Path(run.stdout_path).read_text().splitlines()
        return {"summary": [line for line in lines if line.startswith(("Files:", "Dirs:", "Added to"))]}


# --- running ------------------------------------------------------------------------------------


def export_commit(rev: str, work: Path) -> tuple[Path, str]:
    """The files of `rev` in a folder of their own (reused if there), and the commit id."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", rev], capture_output=True, text=True,
                            check=True).stdout.strip()
    target = work / "code" / commit[:12]
    if not target.exists():
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", commit], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(partial)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise SystemExit(f"git archive {commit} failed")
        partial.rename(target)
    return target, commit


def working_tree_commit() -> str:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "shared", "clients/agent"],
                           capture_output=True, text=True).stdout.strip()
    return commit + (" + uncommitted changes in shared/ or clients/agent" if dirty else "")


def measure_step(engine: Engine, tree: Path, step: str, label: str, full: bool, results: list[dict]) -> None:
    edits = tree_edits(tree)
    run = run_measured(engine.backup(tree, full), env=engine.env, cwd=engine.work, logs=engine.logs,
                       name=label.replace(" ", "-").replace(",", ""), cold=False)
    record(engine, step, run, engine.summary(run), results)
    engine.saw(edits)


def record(engine: Engine, step: str, run: Run, said: dict, results: list[dict], **extra) -> None:
    """A measured step: its row in the results, and a line on stderr as it ends."""
    row = {"engine": engine.name, "step": step, "seconds": round(run.seconds, 2),
           "peak_rss_mib": round(run.peak_rss_bytes / MiB, 1), "load_before": run.load_before,
           **extra, "said": said}
    results.append(row)
    print(f"  {engine.name:6} {step:34} {run.seconds:8.1f} s {row['peak_rss_mib']:8.1f} MiB"
          f"   load {run.load_before[0]:.2f}", file=sys.stderr, flush=True)


def count_files(root: Path) -> int:
    return sum(len(filenames) for _, _, filenames in os.walk(root))


def measure_restore(engine: Engine, tree: Path, results: list[dict]) -> None:
    """Restore the latest snapshot into an empty folder on a "new machine" (the engine's
    caches deleted), then check that every file of the tree came back."""
    into = engine.work / "restored"
    shutil.rmtree(into, ignore_errors=True)
    engine.forget_caches()
    # Cold: the previous step may have deleted a million restored files, and the kernel's
    # leftovers of that (dentries, a busy journal) slowed file creation 2-3 times here.
    run = run_measured(engine.restore(into), env=engine.env, cwd=engine.work, logs=engine.logs,
                       name="restore", cold=True)
    restored = count_files(into)
    expected = count_files(tree)
    shutil.rmtree(into)  # a million files: not left behind for the next run
    if restored != expected:
        raise SystemExit(f"{engine.name} restored {restored} files of {expected}")
    record(engine, RESTORE, run, {"files restored": restored}, results, cold=run.cold)


def catch_up(engine: Engine, tree: Path) -> None:
    """An unmeasured backup when the tree changed after this engine's last one (another
    engine's run, or a run cut short), so the next incremental really has nothing new."""
    edits = tree_edits(tree)
    if engine.seen_edits() == edits:
        return
    print(f"  {engine.name:6} catching up with the tree (not measured)", file=sys.stderr, flush=True)
    run_measured(engine.backup(tree, False), env=engine.env, cwd=engine.work, logs=engine.logs,
                 name="catch-up", cold=False)
    engine.saw(edits)


def run_steps(engines: list[Engine], tree: Path, args, results: list[dict]) -> None:
    """Each step for every engine before the next step, so the files are touched once and
    every repository ends the run with the tree as it is (ready for --skip-full)."""
    for engine in engines:
        if args.skip_full:
            if not engine.exists():
                raise SystemExit(f"--skip-full: no repository of {engine.name} in {engine.work}; "
                                 "run without it first")
            catch_up(engine, tree)
        else:
            engine.fresh()
    if not args.skip_full:
        for engine in engines:
            measure_step(engine, tree, FULL, FULL, True, results)
    for i in range(1, args.repeat + 1):
        for engine in engines:
            measure_step(engine, tree, UNCHANGED, f"{UNCHANGED} {i}", False, results)
    if args.touched:
        changed = touch_files(tree, args.touched)
        step = TOUCHED.format(n=len(changed))
        for engine in engines:
            measure_step(engine, tree, step, step, False, results)
    if args.restore:
        for engine in engines:
            measure_restore(engine, tree, results)


def human_seconds(s: float) -> str:
    return f"{int(s // 60)} min {s % 60:.0f} s" if s >= 60 else f"{s:.1f} s"


def markdown(results: list[dict]) -> str:
    """step | ReClo | restic | ratio: the n-th run of a step of one engine beside the n-th of the other."""
    by_key: dict[tuple[str, int], dict[str, dict]] = {}
    seen: dict[tuple[str, str], int] = {}
    order: list[tuple[str, int]] = []
    for row in results:
        n = seen[(row["engine"], row["step"])] = seen.get((row["engine"], row["step"]), 0) + 1
        key = (row["step"], n)
        if key not in by_key:
            by_key[key] = {}
            order.append(key)
        by_key[key][row["engine"]] = row

    def cell(row: dict | None) -> str:
        if row is None:
            return "–"
        return f"{human_seconds(row['seconds'])}, {row['peak_rss_mib']:.0f} MiB (load {row['load_before'][0]:.1f})"

    lines = ["| step | ReClo | restic | ratio ReClo/restic (time, RSS) |", "|---|---|---|---|"]
    for step, n in order:
        engines = by_key[(step, n)]
        ours, theirs = engines.get("reclo"), engines.get("restic")
        ratio = (f"{ours['seconds'] / theirs['seconds']:.2f}×, {ours['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}×"
                 if ours and theirs else "–")
        lines.append(f"| {step}{f' ({n})' if n > 1 else ''} | {cell(ours)} | {cell(theirs)} | {ratio} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=Path("/var/tmp/million/tree"))
    parser.add_argument("--dirs", type=int, default=1000)
    parser.add_argument("--files-per-dir", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/million/work"),
                        help="repositories, state and caches; kept for --skip-full")
    parser.add_argument("--engines", default="reclo,restic", help="comma-separated: reclo, restic")
    parser.add_argument("--skip-full", action="store_true",
                        help="reuse the repositories (and ReClo's state) of an earlier run in --work")
    parser.add_argument("--repeat", type=int, default=2, help="how many unchanged incrementals (default 2)")
    parser.add_argument("--touched", type=int, default=10,
                        help="then rewrite one file in this many folders and back up again (0: skip)")
    parser.add_argument("--restore", action="store_true",
                        help="last, restore the latest snapshot with each engine's caches deleted")
    parser.add_argument("--at-commit", metavar="REV",
                        help="run the agent of this commit (exported under --work) instead of the working tree")
    args = parser.parse_args()
    tree, work = args.tree.resolve(), args.work.resolve()
    names = [n.strip().lower() for n in args.engines.split(",") if n.strip()]
    unknown = set(names) - {"reclo", "restic"}
    if unknown:
        parser.error(f"unknown engines: {', '.join(sorted(unknown))}")

    tree_note = ensure_tree(tree, args.dirs, args.files_per_dir)
    print(f"tree {tree}: {tree_note}", file=sys.stderr, flush=True)
    work.mkdir(parents=True, exist_ok=True)
    if args.at_commit:
        code, commit = export_commit(args.at_commit, work)
    else:
        code, commit = ROOT, working_tree_commit()
    engines: list[Engine] = []
    for name in names:
        if name == "reclo":
            engines.append(ReClo(work, code))
        elif shutil.which("restic"):
            engines.append(Restic(work))
        else:
            print("restic is not installed (apt-get install restic): skipped", file=sys.stderr)
    files = warm_cache(tree)

    results: list[dict] = []
    run_steps(engines, tree, args, results)
    record = {
        "benchmark": "metadata",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tree": str(tree), "dirs": args.dirs, "files_per_dir": args.files_per_dir, "files": files,
        "page_cache": "warm for the backups (tree stat'ed before the first step); dropped before a restore",
        "skip_full": args.skip_full, "reclo_code": commit,
        "versions": {e.name: e.version() for e in engines},
        "machine": machine(work),
        "load_after": os.getloadavg(),
        "steps": results,
    }
    print(json.dumps(record))
    print()
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
