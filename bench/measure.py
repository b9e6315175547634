"""What the backup benchmark measures, engine-independent: a child process's wall time and
peak RSS, the page cache, the size of a folder, whether two trees are equal, and the
machine the figures come from."""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

MiB = 1024 * 1024
# Files are compared in pieces this large: big enough to keep read() calls few, small
# enough that comparing a multi-GiB image never holds it in memory.
COMPARE_BLOCK = 4 * MiB
# Differences listed by name (the count is always complete): enough to see a pattern.
MAX_LISTED_DIFFERENCES = 20
DROP_CACHES = "/proc/sys/vm/drop_caches"
# How often the memory of a measured process and its children is summed (TreeMemory).
TREE_SAMPLE_SECONDS = 0.02


@dataclass
class Run:
    """One measured child process."""

    argv: list[str]
    seconds: float
    peak_rss_bytes: int  # the higher of its own peak and its process tree's sampled peak
    returncode: int
    load_before: tuple[float, float, float]
    cold: bool  # the page cache was dropped just before it started
    stdout_path: str
    stderr_path: str
    peak_rss_own_bytes: int = 0  # ru_maxrss: the largest single process (wait4)
    peak_rss_tree_bytes: int = 0  # the largest sum over the process and its children, sampled

    def as_dict(self) -> dict:
        return asdict(self)


class CommandFailed(RuntimeError):
    pass


def run_measured(argv: list[str], *, env: dict[str, str], cwd: Path, logs: Path, name: str,
                 cold: bool) -> Run:
    """Run argv in a fresh child and return its wall time and peak RSS.

    The peak RSS is the child's ru_maxrss from wait4 (its own peak, or a waited-for
    descendant's if larger: the largest single process) or, if larger, the sum over the
    child and its descendants sampled every TREE_SAMPLE_SECONDS (an engine that works in
    helper processes holds all of them at once). Nothing else the machine runs is
    counted. With `cold` the page cache is dropped first, so the data is read from disk as
    in a nightly backup.
    """
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / f"{name}.out", logs / f"{name}.err"
    dropped = drop_page_cache() if cold else False
    load = os.getloadavg()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        tree = TreeMemory(proc.pid)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - started
        finally:
            tree_peak = tree.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting again
    own_peak = usage.ru_maxrss * 1024
    run = Run(argv, seconds, max(own_peak, tree_peak), proc.returncode, load, dropped, str(out_path),
              str(err_path), own_peak, tree_peak)
    if run.returncode != 0:
        tail = err_path.read_text(errors="replace")[-2000:] or out_path.read_text(errors="replace")[-2000:]
        raise CommandFailed(f"{' '.join(argv)} exited with {run.returncode}:\n{tail}")
    return run


class TreeMemory:
    """The peak, over samples, of the resident memory of a process and its descendants
    summed (Linux /proc; 0 elsewhere). RSS, not PSS: pages two processes share (the
    interpreter, libraries) count for each, which overstates a tree a little."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        while not self._done.wait(TREE_SAMPLE_SECONDS):
            total = 0
            for pid in _descendants_and_self(self.pid):
                try:
                    with open(f"/proc/{pid}/statm") as f:
                        total += int(f.read().split()[1]) * page
                except (OSError, ValueError, IndexError):
                    continue  # gone meanwhile
            self.peak = max(self.peak, total)


def _descendants_and_self(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:  # a child belongs to the thread that started it
            try:
                with open(f"/proc/{current}/task/{task}/children") as f:
                    pending.extend(int(c) for c in f.read().split())
            except (OSError, ValueError):
                continue
    return found


def run_quiet(argv: list[str], *, env: dict[str, str], cwd: Path | None = None) -> str:
    """A step that is not measured (init, version); its output, or an error with it."""
    done = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        output = done.stderr[-2000:] + done.stdout[-2000:]
        raise CommandFailed(f"{' '.join(argv)} exited with {done.returncode}:\n{output}")
    return done.stdout


def drop_page_cache() -> bool:
    """Write dirty pages, then drop clean ones (needs root); False if not allowed."""
    os.sync()
    try:
        with open(DROP_CACHES, "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def can_drop_page_cache() -> bool:
    return os.access(DROP_CACHES, os.W_OK) and drop_page_cache()


@dataclass
class FolderSize:
    bytes: int  # sum of file sizes: what an object store bills
    allocated: int  # blocks on disk: what `du` shows
    files: int


def folder_size(root: Path) -> FolderSize:
    total = allocated = files = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_size
            allocated += st.st_blocks * 512
            files += 1
    return FolderSize(total, allocated, files)


@dataclass
class TreeComparison:
    files: int = 0
    bytes: int = 0
    differences: int = 0  # paths missing, extra, of another type, or with other bytes
    listed: list[str] = field(default_factory=list)
    mtime_differences: int = 0  # files whose bytes match but whose mtime does not

    @property
    def identical(self) -> bool:
        return self.differences == 0

    def note(self, text: str) -> None:
        self.differences += 1
        if len(self.listed) < MAX_LISTED_DIFFERENCES:
            self.listed.append(text)

    def as_dict(self) -> dict:
        return {**asdict(self), "identical": self.identical}


def _entries(root: Path) -> dict[str, str]:
    """Relative path -> type, for everything below root (symlinks are not followed)."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            kind = ("dir" if stat.S_ISDIR(mode) else "symlink" if stat.S_ISLNK(mode)
                    else "file" if stat.S_ISREG(mode) else "other")
            found[os.path.normpath(os.path.join(rel_dir, name))] = kind
    return found


def compare_trees(source: Path, restored: Path) -> TreeComparison:
    """Byte-compare every file, and compare the set of paths and their types."""
    result = TreeComparison()
    want, got = _entries(source), _entries(restored)
    for rel in sorted(want.keys() - got.keys()):
        result.note(f"missing: {rel}")
    for rel in sorted(got.keys() - want.keys()):
        result.note(f"extra: {rel}")
    for rel in sorted(want.keys() & got.keys()):
        a, b = source / rel, restored / rel
        if want[rel] != got[rel]:
            result.note(f"type {want[rel]} became {got[rel]}: {rel}")
        elif want[rel] == "symlink":
            if os.readlink(a) != os.readlink(b):
                result.note(f"symlink target differs: {rel}")
        elif want[rel] == "file":
            result.files += 1
            sa, sb = os.stat(a), os.stat(b)
            result.bytes += sa.st_size
            if sa.st_size != sb.st_size:
                result.note(f"size {sa.st_size} became {sb.st_size}: {rel}")
            elif not _same_bytes(a, b):
                result.note(f"content differs: {rel}")
            elif sa.st_mtime_ns != sb.st_mtime_ns:
                result.mtime_differences += 1
    return result


def _same_bytes(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(COMPARE_BLOCK), fb.read(COMPARE_BLOCK)
            if x != y:
                return False
            if not x:
                return True


def machine(work: Path) -> dict:
    """What a reader needs to put the figures in context."""
    meminfo = Path("/proc/meminfo").read_text()
    mem_kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    disk = shutil.disk_usage(work)
    mount = _mount_of(work)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "work_dir": str(work),
        "filesystem": mount,
        "disk_free_gib": round(disk.free / 1024**3, 1),
    }


def _mount_of(path: Path) -> dict:
    best: dict = {}
    target = os.path.realpath(path)
    with open("/proc/mounts") as f:
        for line in f:
            device, point, fstype = line.split()[:3]
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best.get("mount", "")):
                best = {"device": device, "mount": point, "type": fstype}
    return best


def _os_name() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return platform.system()
    found = re.search(r'^PRETTY_NAME="?([^"\n]*)', text, re.M)
    return found.group(1) if found else platform.system()


def free_port() -> int:
    """A loopback port nobody listens on now (for a server the benchmark starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_processes(procs: list[subprocess.Popen], timeout: float) -> None:
    """SIGTERM each (the last started first), then SIGKILL what did not stop in time."""
    for proc in reversed(procs):
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    procs.clear()
