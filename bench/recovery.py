"""Recovery: from an image backup to an import-ready image, timed (issues 4 and 8: a 10 GiB
image in at most 2 minutes on this machine).

    .venv/bin/python bench/recovery.py --size-gib 1 [--data-fraction 0.5]
                                       [--format vmdk|raw|vhd[,...]] [--s3] [--work DIR]
                                       [--profile] [--warm] [--keep] [--out results.json]

What it does, each step a real process as in production:
1. builds the disk: an ext4 filesystem image (`mke2fs -t ext4 -d DIR`) of --size-gib whose
   files hold --data-fraction of it: three quarters incompressible (AES-CTR keystream, like
   media, archives and office files) and a quarter text (log and CSV-like lines, which zstd
   compresses); file sizes spread from 16 KiB to 64 MiB; the rest of the disk is free space;
2. starts `reclo up` (every service in one process; SQLite, the in-process bus, the local
   folder object store, or moto_server's S3 with --s3), registers a user, and backs the disk
   up with the real `reclo-agent` (register, init, backup of an image source) through the
   backup service;
3. for each format asked for, in turn (one disk and one backup serve them all): waits for
   a quiet machine (1-minute load below --max-load, at most --wait-minutes),
   drops the page cache (unless --warm: the repository was just written and would be read
   from memory, unlike from S3), then requests the recovery (`POST /api/v1/recoveries`,
   target local, the chosen format) and polls the task until it is `finishing`: the image is
   kept, its SHA-256 taken and it can be downloaded. Each change of the task's message
   marks a phase (queued, opening the repository, assembling, converting, keeping, digest);
   the service's CPU time, its peak RSS (VmHWM, reset just before the request) and
   qemu-img's are sampled with each poll (a VMDK is written by the service itself,
   services/recovery/vmdk.py, so its conversion is the service's CPU; qemu-img makes VHDs);
4. verifies the image against the source disk with `qemu-img compare` (and, for raw, the
   SHA-256 the service reports against the source's), not timed, and deletes it;
5. stops everything and removes the work folder (unless --keep).

With --profile, py-spy samples the service process from the request to `finishing`
(`.venv/bin/pip install py-spy`); the summary lists where the samples fell.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from measure import free_port, stop_processes

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MiB = 1 << 20
GiB = 1 << 30

TARGET_SECONDS = 120.0  # issue 4 / issue 8: a 10 GiB image, request to import-ready
TARGET_SIZE_GIB = 10

USERNAME = "bench"
PASSWORD = "benchmark password"  # a throw-away user on a throw-away server
PASSPHRASE = "benchmark passphrase"
HOST = "bench-host"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1"}

# The disk's files: a file server's mix. Sizes log-uniform in this range; a quarter of the
# data is text (compressible), the rest incompressible, as most of a business's bytes are
# already-compressed formats.
FILE_MIN, FILE_MAX = 16 << 10, 64 << 20
TEXT_SHARE = 0.25
FILES_PER_FOLDER = 64
WRITE_PIECE = 4 * MiB
# Text is stitched from random slices of one pool of lines, so no two 1 MiB chunks of the
# disk are alike (the agent dedups aligned 1 MiB chunks) while text stays text.
TEXT_POOL_BYTES = 8 * MiB
TEXT_SLICE = (512, 16 << 10)
# ext4 needs room for its own metadata (inode tables, journal: a few % of a small disk).
MAX_DATA_FRACTION = 0.85

# Scratch the run needs at its peak, in multiples of the data: the source disk, the
# repository (a little less: text compresses), the assembled raw disk and the converted
# image, side by side during conversion; plus the content folder while mke2fs copies it
# (gone before the backup), and the 1 GiB the recovery worker keeps free.
SCRATCH_DATA_MULTIPLE = 4
SCRATCH_SLACK = 2 * GiB

POLL_SECONDS = 0.2  # the task's phases are timed to this resolution
START_TIMEOUT = 120.0  # `reclo up` migrates and starts in seconds; a loaded machine needs more
STOP_TIMEOUT = 30.0
RECOVERY_TIMEOUT = 3600.0
LOAD_POLL_SECONDS = 15
DROP_CACHES = "/proc/sys/vm/drop_caches"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The task's messages (services/recovery/pipeline.py) and the phase each one starts.
PHASES = {
    "reading the backup": "open repository",
    "downloading the disk": "assemble",
    "keeping the image": "keep image",
    "importing the disk": "digest",
    "checking the image": "digest",
}


def phase_of(state: str, message: str) -> str:
    if state == "pending":
        return "queued"
    if message.startswith("converting the disk"):
        return "convert"
    return PHASES.get(message, message)


# --- the machine and its disk ------------------------------------------------------------


def load() -> tuple[float, float, float]:
    return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]


def machine(work: Path) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "unknown")
    mem = int(next(line.split()[1] for line in open("/proc/meminfo")
                   if line.startswith("MemTotal")))
    qemu = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True).stdout
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "memory_gib": round(mem / 1024**2, 1),
            "kernel": os.uname().release, "python": sys.version.split()[0],
            "qemu_img": qemu.splitlines()[0] if qemu else "?", "work_dir": str(work),
            "disk_free_gib": round(shutil.disk_usage(work).free / GiB, 1)}


def scratch_needed(size: int, fraction: float) -> int:
    return int(size * fraction) * SCRATCH_DATA_MULTIPLE + SCRATCH_SLACK


def choose_work(requested: str | None, size: int, fraction: float) -> Path:
    """The candidate folder with the most free space; refuse when even that is too small,
    naming the largest disk that would fit."""
    candidates = [Path(requested)] if requested else [Path("/work"), Path("/tmp"),
                                                       Path("/var/tmp")]
    candidates = [c for c in candidates if c.is_dir()]
    best = max(candidates, key=lambda c: shutil.disk_usage(c).free)
    free = shutil.disk_usage(best).free
    need = scratch_needed(size, fraction)
    if free < need:
        fits = (free - SCRATCH_SLACK) / (fraction * SCRATCH_DATA_MULTIPLE) / GiB
        raise SystemExit(f"{best} has {free / GiB:.1f} GiB free; this run needs about "
                         f"{need / GiB:.1f} GiB. The largest disk that fits at data fraction "
                         f"{fraction}: --size-gib {max(0, int(fits))}")
    return best


def drop_page_cache() -> bool:
    os.sync()
    try:
        with open(DROP_CACHES, "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def wait_for_quiet(max_load: float, minutes: float) -> tuple[float, float, float]:
    deadline = time.monotonic() + minutes * 60
    while load()[0] > max_load and time.monotonic() < deadline:
        print(f"  load {load()} above {max_load}: waiting", file=sys.stderr)
        time.sleep(LOAD_POLL_SECONDS)
    return load()


# --- the source disk ----------------------------------------------------------------------

WORDS = ("invoice customer order shipped pending total account ledger backup server "
         "report quarterly payment received warning error info request response user "
         "admin session database table index query latency bytes file folder share "
         "printer network address gateway timeout retry success failed north south "
         "east west monday tuesday wednesday thursday friday").split()


def text_pool(rng: random.Random) -> bytes:
    lines = []
    size = 0
    while size < TEXT_POOL_BYTES:
        line = (f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
                f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} "
                f"{rng.choice(('INFO', 'WARN', 'ERROR', 'DEBUG'))} "
                + " ".join(rng.choices(WORDS, k=rng.randint(4, 14)))
                + f" id={rng.randint(1, 10**9)} amount={rng.randint(0, 99999) / 100}\n")
        lines.append(line)
        size += len(line)
    return "".join(lines).encode()


class Content:
    """Reproducible file contents: a keystream for the incompressible part, slices of the
    text pool for the text part."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        key = hashlib.sha256(f"reclo-bench-{seed}".encode()).digest()
        self._stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        self._zeros = bytes(WRITE_PIECE)
        self.pool = text_pool(self.rng)

    def random(self, n: int) -> bytes:
        return self._stream.update(self._zeros[:n])

    def text(self, n: int) -> bytes:
        pieces, size = [], 0
        while size < n:
            length = self.rng.randint(*TEXT_SLICE)
            start = self.rng.randrange(0, len(self.pool) - length)
            pieces.append(self.pool[start:start + length])
            size += length
        return b"".join(pieces)[:n]


@dataclass
class Disk:
    path: Path
    size: int
    data_bytes: int  # bytes in files
    allocated: int  # blocks the raw image occupies (data plus filesystem metadata)
    files: int
    text_bytes: int
    build_seconds: float


def write_files(content_dir: Path, data_bytes: int, seed: int) -> tuple[int, int]:
    content = Content(seed)
    rng = content.rng
    text_goal = int(data_bytes * TEXT_SHARE)
    left = data_bytes
    files = text_bytes = 0
    while left > 0:
        size = min(left, int(FILE_MIN * (FILE_MAX / FILE_MIN) ** rng.random()))
        # Text while behind its share, so it is spread over the disk, not all at one end.
        is_text = text_bytes < text_goal * (1 - left / data_bytes) + FILE_MIN
        folder = content_dir / f"share-{files // FILES_PER_FOLDER:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{'log' if is_text else 'doc'}-{files:05d}.{'txt' if is_text else 'bin'}"
        with open(folder / name, "wb") as out:
            done = 0
            while done < size:
                n = min(WRITE_PIECE, size - done)
                out.write(content.text(n) if is_text else content.random(n))
                done += n
        text_bytes += size if is_text else 0
        left -= size
        files += 1
    return files, text_bytes


def build_disk(work: Path, size: int, fraction: float, seed: int) -> Disk:
    started = time.perf_counter()
    content_dir = work / "content"
    data_bytes = int(size * fraction)
    files, text_bytes = write_files(content_dir, data_bytes, seed)
    path = work / "source.raw"
    # -m 0: no blocks reserved for root (a data disk, and the fraction stays the files').
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-m", "0", "-d", str(content_dir), "-F",
                    str(path), f"{size // 1024}k"], check=True)
    shutil.rmtree(content_dir)
    return Disk(path, size, data_bytes, os.stat(path).st_blocks * 512, files, text_bytes,
                time.perf_counter() - started)


# --- the server -----------------------------------------------------------------------------


def http(url: str, body: dict | None = None, token: str | None = None,
         method: str | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"))
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECLO_", "AWS_"))}
    env.update(extra)
    return env


class Processes:
    """The servers this run started; stopped in reverse order, whatever happens."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], ready_url: str
              ) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
        log.close()
        self.running.append(proc)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                urllib.request.urlopen(ready_url, timeout=2).close()
                return proc
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{name} did not start; see {self.logs / f'{name}.log'}")
                time.sleep(0.2)

    def stop(self) -> None:
        stop_processes(self.running, STOP_TIMEOUT)


def proc_status(pid: int, key: str) -> int:
    """A kB field of /proc/PID/status, in bytes (0 once the process is gone)."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(own user+system CPU, that of its children: reaped ones plus those still running)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    own = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    reaped = (int(fields[13]) + int(fields[14])) / CLOCK_TICKS
    live = sum(cpu_seconds(child)[0] for child in children(pid))
    return own, reaped + live


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry))
    return found


def reset_peak_rss(pid: int) -> bool:
    """Writing 5 to clear_refs resets VmHWM (Linux ≥ 4.0), so the peak measured is the
    recovery's, not the backup's the same process served before."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5\n")
        return True
    except OSError:
        return False


# --- the backup -----------------------------------------------------------------------------


def agent(config: Path, *args: str) -> list[str]:
    return [str(BIN / "reclo-agent"), "--config", str(config), *args]


def back_up(work: Path, base: str, disk: Disk, env: dict[str, str]) -> dict:
    config = work / "agent" / "agent.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[[sources]]\npath = "{disk.path}"\ntype = "image"\n')
    status, body = http(base + "/api/v1/auth/register",
                        {"username": USERNAME, "password": PASSWORD})
    assert status == 201, body
    run = {**env, "RECLO_PASSWORD": PASSWORD, "RECLO_PASSPHRASE": PASSPHRASE}
    for step in (("register", "--server", base, "--username", USERNAME, "--host", HOST),
                 ("init",)):
        subprocess.run(agent(config, *step), env=run, cwd=ROOT, check=True,
                       stdin=subprocess.DEVNULL, capture_output=True)
    started = time.perf_counter()
    done = subprocess.run(agent(config, "--json", "backup"), env=run, cwd=ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    results = [json.loads(line) for line in done.stdout.splitlines()
               if line.startswith("{") and '"result"' in line]
    if done.returncode != 0 or not results:
        raise SystemExit(f"the backup failed ({done.returncode}):\n{done.stderr[-3000:]}"
                         f"\n{done.stdout[-3000:]}")
    result = results[-1]
    return {"seconds": round(seconds, 1), "backup_id": result["backup_id"],
            "stored_bytes": result.get("stored_bytes"), "bytes_read": result.get("bytes_read")}


def login(base: str) -> str:
    status, body = http(base + "/api/v1/auth/login", {"username": USERNAME, "password": PASSWORD})
    assert status == 200, body
    return body["token"]


# --- the recovery ---------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the request
    state: str
    message: str
    total_progress: int
    cpu_own: float
    cpu_children: float
    cpu_s3: float = 0.0  # moto_server's, with --s3: whether the object store is the limit


@dataclass
class Timeline:
    samples: list[Sample] = field(default_factory=list)
    qemu_img_peak_rss: int = 0
    final: dict = field(default_factory=dict)

    def first(self, state: str) -> float | None:
        return next((s.t for s in self.samples if s.state == state), None)

    def phases(self) -> list[dict]:
        """Each phase from the first poll that saw it to the first poll of the next, with
        the service's CPU seconds (own, and qemu-img's) in between."""
        starts: list[tuple[str, Sample]] = []
        for s in self.samples:
            if s.state in ("finishing", "complete", "failed"):
                starts.append(("end", s))
                break
            name = phase_of(s.state, s.message)
            if not starts or starts[-1][0] != name:
                starts.append((name, s))
        found = []
        for (name, a), (_, b) in zip(starts, starts[1:]):
            found.append({"phase": name, "seconds": round(b.t - a.t, 2),
                          "cpu_service": round(b.cpu_own - a.cpu_own, 1),
                          "cpu_qemu_img": round(b.cpu_children - a.cpu_children, 1),
                          "cpu_s3": round(b.cpu_s3 - a.cpu_s3, 1)})
        merged: dict[str, dict] = {}
        for p in found:  # a phase seen twice (a message changed back) is added up
            if p["phase"] in merged:
                for k in ("seconds", "cpu_service", "cpu_qemu_img", "cpu_s3"):
                    merged[p["phase"]][k] = round(merged[p["phase"]][k] + p[k], 2)
            else:
                merged[p["phase"]] = p
        return list(merged.values())


def recover(base: str, token: str, backup_id: str, disk_format: str, server_pid: int,
            s3_pid: int | None) -> Timeline:
    timeline = Timeline()
    body = {"backup_id": backup_id, "target": "local", "format": disk_format,
            "passphrase": PASSPHRASE}
    deadline = time.monotonic() + 30
    while True:  # 404 until the backup's BackupUploaded reached recovery
        started = time.perf_counter()
        cpu0 = cpu_seconds(server_pid)
        s3_cpu0 = cpu_seconds(s3_pid)[0] if s3_pid else 0.0
        status, created = http(base + "/api/v1/recoveries", body, token)
        if status == 201:
            break
        if status != 404 or time.monotonic() > deadline:
            raise SystemExit(f"the recovery request was refused: {status} {created}")
        time.sleep(0.2)
    url = f"{base}/api/v1/recoveries/{created['id']}"
    # The request itself starts the first phase, so the phases add up to the total.
    timeline.samples.append(Sample(0.0, "pending", created["message"], 0, 0.0, 0.0))
    while True:
        status, task = http(url, token=token)
        now = time.perf_counter() - started
        own, kids = cpu_seconds(server_pid)
        s3_cpu = cpu_seconds(s3_pid)[0] - s3_cpu0 if s3_pid else 0.0
        for child in children(server_pid):
            timeline.qemu_img_peak_rss = max(timeline.qemu_img_peak_rss,
                                             proc_status(child, "VmHWM"))
        timeline.samples.append(Sample(round(now, 3), task["state"], task["message"],
                                       task["total_progress"], own - cpu0[0],
                                       kids - cpu0[1], s3_cpu))
        if task["state"] in ("finishing", "complete", "failed") or now > RECOVERY_TIMEOUT:
            timeline.final = task
            return timeline
        time.sleep(POLL_SECONDS)


def verify(disk: Disk, image: Path, disk_format: str, reported_sha256: str | None) -> dict:
    started = time.perf_counter()
    qemu_format = {"raw": "raw", "vmdk": "vmdk", "vhd": "vpc"}[disk_format]
    compare = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", qemu_format,
                              str(disk.path), str(image)], capture_output=True, text=True)
    result = {"qemu_img_compare": compare.stdout.strip() or compare.stderr.strip(),
              "identical": compare.returncode == 0}
    if disk_format == "raw":
        digest = hashlib.sha256()
        with open(disk.path, "rb") as f:
            while piece := f.read(WRITE_PIECE):
                digest.update(piece)
        result["sha256_matches"] = digest.hexdigest() == reported_sha256
        result["identical"] = result["identical"] and result["sha256_matches"]
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


# --- the profile ----------------------------------------------------------------------------


def start_profile(pid: int, out: Path) -> subprocess.Popen | None:
    py_spy = BIN / "py-spy"
    if not py_spy.exists():
        print("  py-spy is not installed (.venv/bin/pip install py-spy): no profile",
              file=sys.stderr)
        return None
    # --nonblocking: sampling never pauses the service (a paused worker would be timed).
    return subprocess.Popen([str(py_spy), "record", "--pid", str(pid), "--rate", "100",
                             "--nonblocking", "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profile(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait_points() -> set[tuple[str, str]]:
    """(function, file:line) where this interpreter's idle threads sit: py-spy counts a
    thread blocked in a C call (a queue's get) as busy, at the Python line making it."""
    import concurrent.futures.thread as pool

    import aiosqlite.core as sqlite_thread

    points = set()
    for func, label in ((pool._worker, "_worker"),
                        (sqlite_thread._connection_worker_thread, "_connection_worker_thread")):
        lines, first = inspect.getsourcelines(func)
        for i, text in enumerate(lines):
            if ".get(" in text and "=" in text:
                points.add((label, f"{Path(inspect.getfile(func)).name}:{first + i}"))
    return points


# What a busy sample was doing, by the first of these found on its stack (the innermost
# step first): the recovery's own steps, then the machinery around them.
ACTIVITIES = (
    ("SHA-256 digest of the image", ("image_facts (",)),
    ("scrypt (opening the repository)", ("_derive (shared/format/kdf.py",)),
    ("BLAKE3 keyed id check", ("chunk_id (",)),
    ("zstd decompression", ("decode (shared/format/compression",)),
    ("AES-GCM decryption", ("MasterKey.open (",)),
    ("reading packs", ("Store._get (", "Store.get (")),
    ("deflating VMDK grains", ("_deflate (",)),
    ("reading the raw disk for the VMDK", ("_pack (",)),
    ("writing the VMDK", ("_write (services/recovery/vmdk",)),
    ("writing the raw disk", ("_write_sparse (",)),
    ("database and outbox (SQLite, relays)", ("aiosqlite/", "sqlalchemy/", "Outbox.")),
    ("HTTP (gateway, API polls)", ("aiohttp/", "services/gateway/")),
    ("C calls in the thread pool (file reads, fdatasync)", ("_WorkItem.run (",)),
)
OTHER_ACTIVITY = "asyncio and the rest"


def summarise_profile(path: Path, top: int = 12) -> dict:
    """From py-spy's collapsed stacks, without the samples of idle threads (the event loop
    in select, pool threads waiting for work): the functions busy samples ended in (self),
    and what each busy sample was doing (ACTIVITIES)."""
    if not path.exists():
        return {}
    waits = _wait_points()
    leaf, doing = Counter(), Counter()
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        name, where = _split(frames[-1])
        if name == "EpollSelector.select" or (name, where) in waits:
            idle += n
            continue
        total += n
        leaf[_frame(frames[-1])] += n
        doing[next((label for label, marks in ACTIVITIES
                    if any(mark in stack for mark in marks)), OTHER_ACTIVITY)] += n

    def share(counter: Counter, limit: int | None) -> list[tuple[str, float]]:
        return [(name, round(100 * n / max(1, total), 1))
                for name, n in counter.most_common(limit)]

    return {"busy_samples": total, "idle_samples": idle, "self": share(leaf, top),
            "activities": share(doing, None)}


def _split(frame: str) -> tuple[str, str]:
    """`func (path/file.py:123)` → (`func`, `file.py:123`)."""
    name, _, where = frame.partition(" (")
    return name, Path(where.rstrip(")")).name


def _frame(frame: str) -> str:
    """`func (path/file.py:123)` → `func (path/file.py)`: lines apart, one function."""
    name, _, where = frame.partition(" (")
    name = name or "(unnamed frame)"
    return f"{name} ({where.rstrip(')').rsplit(':', 1)[0]})" if where else name


# --- the run --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gib", type=float, required=True)
    parser.add_argument("--data-fraction", type=float, default=0.5)
    parser.add_argument("--format", default="vmdk",
                        help="vmdk, raw or vhd; several, comma-separated, are recovered in "
                             "turn from the same backup")
    parser.add_argument("--s3", action="store_true", help="the backup bucket on moto_server")
    parser.add_argument("--work", help="scratch parent folder (default: the roomiest of "
                                       "/work, /tmp, /var/tmp)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="py-spy the service")
    parser.add_argument("--warm", action="store_true", help="keep the page cache")
    parser.add_argument("--max-load", type=float, default=2.0)
    parser.add_argument("--wait-minutes", type=float, default=5.0)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    formats = args.format.split(",")
    if not set(formats) <= {"vmdk", "raw", "vhd"}:
        parser.error("--format takes vmdk, raw, vhd")
    if not 0 < args.data_fraction <= MAX_DATA_FRACTION:
        parser.error(f"--data-fraction must be in (0, {MAX_DATA_FRACTION}]")
    size = int(args.size_gib * GiB) // MiB * MiB
    parent = choose_work(args.work, size, args.data_fraction)
    work = Path(tempfile.mkdtemp(prefix="reclo-recovery-bench-", dir=parent))
    logs = work / "logs"
    logs.mkdir()
    processes = Processes(logs)
    result: dict = {"size_gib": args.size_gib, "data_fraction": args.data_fraction,
                    "store": "s3 (moto)" if args.s3 else "local folder",
                    "machine": machine(parent), "recoveries": []}
    try:
        print(f"building a {args.size_gib:g} GiB ext4 disk in {work}", file=sys.stderr)
        disk = build_disk(work, size, args.data_fraction, args.seed)
        result["disk"] = {k: v for k, v in asdict(disk).items() if k != "path"}

        server_env = clean_env(RECLO_LOG_LEVEL="info", RECLO_LOG_FORMAT="json")
        s3_pid = None
        if args.s3:
            s3_url = f"http://127.0.0.1:{free_port()}"
            # TMPDIR: moto spools object bodies to temporary files; keep them in our folder.
            s3_pid = processes.start("moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p",
                                     s3_url.rsplit(":", 1)[1]],
                            clean_env(TMPDIR=str(work)), s3_url + "/moto-api/").pid
            server_env.update(RECLO_S3_ENDPOINT=s3_url, **S3_CREDENTIALS)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = processes.start("server", [str(BIN / "reclo"), "up", "--data-dir",
                                            str(work / "server"), "--port", str(port)],
                                 server_env, base + "/readyz")
        print("backing the disk up with reclo-agent", file=sys.stderr)
        result["backup"] = back_up(work, base, disk, clean_env())
        token = login(base)
        for disk_format in formats:
            result["recoveries"].append(one_recovery(
                args, work, disk, base, token, result["backup"]["backup_id"], disk_format,
                server.pid, s3_pid))
    finally:
        processes.stop()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_summary(result)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0 if all(r["verification"]["identical"] for r in result["recoveries"]) else 1


def one_recovery(args, work: Path, disk: Disk, base: str, token: str, backup_id: str,
                 disk_format: str, server_pid: int, s3_pid: int | None) -> dict:
    """One timed recovery of the backup into ``disk_format``, verified, its image removed
    afterwards (the next one needs the room)."""
    result: dict = {"format": disk_format}
    result["load_before"] = wait_for_quiet(args.max_load, args.wait_minutes)
    result["cold"] = False if args.warm else drop_page_cache()
    result["peak_rss_reset"] = reset_peak_rss(server_pid)
    profile_path = work / f"profile-{disk_format}.txt"
    profile = start_profile(server_pid, profile_path) if args.profile else None
    print(f"recovering into {disk_format} (load {result['load_before']})", file=sys.stderr)
    try:
        timeline = recover(base, token, backup_id, disk_format, server_pid, s3_pid)
    finally:
        if profile is not None:
            stop_profile(profile)
    if profile is not None:
        result["profile"] = summarise_profile(profile_path)
    result["load_after"] = load()
    result["service_peak_rss_mib"] = round(proc_status(server_pid, "VmHWM") / MiB)
    result["qemu_img_peak_rss_mib"] = round(timeline.qemu_img_peak_rss / MiB)
    task = timeline.final
    if task["state"] not in ("finishing", "complete"):
        raise SystemExit(f"the recovery did not finish: {task['state']} "
                         f"{task.get('failure_reason') or task['message']}")
    ready = timeline.first("importing")
    finished = timeline.first("finishing") or timeline.first("complete")
    result.update(phases=timeline.phases(), import_ready_seconds=ready,
                  finishing_seconds=finished, image_bytes=task["image_bytes"],
                  disk_mib_per_second=round(disk.size / MiB / finished, 1),
                  data_mib_per_second=round(disk.data_bytes / MiB / finished, 1))
    if args.size_gib >= TARGET_SIZE_GIB:
        result["target_met"] = finished <= TARGET_SECONDS
    image = work / "server" / "recovery" / "images" / task["image_ref"]
    result["verification"] = verify(disk, image, disk_format, task["image_sha256"])
    image.unlink()
    return result


def print_summary(result: dict) -> None:
    out = sys.stderr
    d = result["disk"]
    print(f"\n{result['size_gib']:g} GiB disk, {d['data_bytes'] / GiB:.2f} GiB in {d['files']} "
          f"files ({d['text_bytes'] / GiB:.2f} GiB text), store {result['store']}; backup by "
          f"reclo-agent: {result['backup']['seconds']} s", file=out)
    for r in result["recoveries"]:
        print(f"\n{r['format']}, {'cold' if r['cold'] else 'warm'} cache", file=out)
        for p in r["phases"]:
            print(f"  {p['phase']:<16} {p['seconds']:>7.1f} s   cpu: service "
                  f"{p['cpu_service']} s, qemu-img {p['cpu_qemu_img']} s"
                  + (f", moto {p['cpu_s3']} s" if p["cpu_s3"] else ""), file=out)
        print(f"import-ready (image kept) {r['import_ready_seconds']:.1f} s; with its SHA-256 "
              f"(finishing) {r['finishing_seconds']:.1f} s = {r['disk_mib_per_second']} MiB/s "
              f"of disk, {r['data_mib_per_second']} MiB/s of data; image "
              f"{r['image_bytes'] / MiB:.0f} MiB", file=out)
        print(f"peak RSS: service {r['service_peak_rss_mib']} MiB, qemu-img "
              f"{r['qemu_img_peak_rss_mib']} MiB; load before {r['load_before']}, after "
              f"{r['load_after']}", file=out)
        if "target_met" in r:
            print(f"target ≤ {TARGET_SECONDS:.0f} s: {'met' if r['target_met'] else 'NOT met'}",
                  file=out)
        print(f"verification: {r['verification']}", file=out)
        for title, key in (("py-spy, self", "self"), ("py-spy, activities", "activities")):
            if r.get("profile", {}).get(key):
                print(f"{title} ({r['profile']['busy_samples']} busy samples, "
                      f"{r['profile']['idle_samples']} idle left out):", file=out)
                for name, pct in r["profile"][key]:
                    print(f"  {pct:5.1f}%  {name}", file=out)


if __name__ == "__main__":
    sys.exit(main())
