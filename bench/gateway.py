"""Gateway throughput: authenticated `GET /api/v1/auth/me` per second and p99 latency.

Starts the server side as its own process(es), registers a user, logs in, then loads the
gateway from a second process with wrk (Debian's `wrk`), so client and server don't share
an interpreter. Two ways to run the server:

- ``--mode embedded`` (default): ``reclo up``, every service in one process;
- ``--mode split``: ``reclo serve auth`` and ``reclo serve gateway`` as two processes, as
  compose and Kubernetes run them (the other services are not needed for this path).

``--mariadb`` puts auth's database on MariaDB and the bus on RabbitMQ (loopback).
``--profile DIR`` samples each server process with py-spy while wrk runs and prints the
functions where most samples fell (``.venv/bin/pip install py-spy``).

    .venv/bin/python bench/gateway.py [--mode split] [--mariadb] [--seconds 15] \\
        [--connections 32] [--log-level warning] [--profile /tmp/gw-prof]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from measure import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def call(url: str, body: dict | None = None, token: str | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_ready(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer")


def parse_wrk(text: str) -> dict:
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    latencies = {}
    for pct, value, unit in re.findall(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s)\s*$", text,
                                       re.M):
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
        latencies[float(pct)] = float(value) * scale
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    socket_errors = re.search(r"Socket errors:.*", text)
    return {"requests_per_second": rate, "p50_ms": latencies.get(50.0),
            "p99_ms": latencies.get(99.0), "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(0) if socket_errors else None}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def requests_done(text: str) -> int:
    return int(re.search(r"(\d+) requests in", text).group(1))


def top_functions(raw: Path, count: int = 25) -> list[tuple[float, str]]:
    """Self time per function from py-spy's collapsed stacks (idle samples excluded:
    py-spy records without --idle)."""
    self_samples: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        samples = int(n)
        total += samples
        self_samples[stack.split(";")[-1]] += samples
    return [(100.0 * n / total, frame) for frame, n in self_samples.most_common(count)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("embedded", "split"), default="embedded")
    parser.add_argument("--mariadb", action="store_true")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-level", default="warning",
                        help="the servers' RECLO_LOG_LEVEL; `info` writes a line per request")
    parser.add_argument("--uvloop", action="store_true", help="servers on uvloop's event loop")
    parser.add_argument("--profile", type=Path, help="py-spy each server process into DIR")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")

    data_dir = tempfile.mkdtemp(prefix="reclo-bench-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECLO_")}
    # One key for both processes of the split mode (else they race to create it).
    env.update({"RECLO_LOG_LEVEL": args.log_level, "RECLO_DATA_DIR": data_dir,
                "RECLO_INTERNAL_KEY": os.urandom(32).hex()})
    prefix = f"bench{os.getpid()}_"
    if args.mariadb:
        env.update({"RECLO_DATABASE_URL": "mysql+aiomysql://root@127.0.0.1:3306/",
                    "RECLO_DATABASE_PREFIX": prefix,
                    "RECLO_BUS_URL": "amqp://guest:guest@127.0.0.1:5672/",
                    "RECLO_BUS__QUEUE_PREFIX": prefix})
    gateway_port = free_port()
    reclo = [sys.executable, "-m", "services.cli"]
    if args.uvloop:
        # What `reclo` would do with uvloop as its event loop.
        reclo = [sys.executable, "-c", "import asyncio, uvloop, sys; "
                 "asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
                 "from services.cli import main; main(sys.argv[1:])"]
    servers: dict[str, subprocess.Popen] = {}
    log_file = open(Path(data_dir) / "server.log", "w")  # noqa: SIM115 - closed below
    if args.mode == "embedded":
        commands = {"reclo up": [*reclo, "up", "--data-dir", data_dir,
                                 "--port", str(gateway_port)]}
    else:
        auth_port = free_port()
        env.update({"RECLO_GATEWAY__PORT": str(gateway_port), "RECLO_AUTH__PORT": str(auth_port),
                    "RECLO_AUTH__URL": f"http://127.0.0.1:{auth_port}"})
        commands = {"auth": [*reclo, "serve", "auth", "--migrate", "--host", "127.0.0.1"],
                    "gateway": [*reclo, "serve", "gateway", "--host", "127.0.0.1"]}
    base = f"http://127.0.0.1:{gateway_port}"
    try:
        for name, command in commands.items():
            servers[name] = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file,
                                             stderr=log_file)
        if args.mode == "split":
            wait_ready(f"http://127.0.0.1:{auth_port}/healthz")
        wait_ready(base + "/readyz")
        call(base + "/api/v1/auth/register", {"username": "bench", "password": "bench-password"})
        token = call(base + "/api/v1/auth/login",
                     {"username": "bench", "password": "bench-password"})["token"]
        assert call(base + "/api/v1/auth/me", token=token)["username"] == "bench"
        load_before = os.getloadavg()[0]
        spies = {}
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for name, server in servers.items():
                out = args.profile / f"{name.replace(' ', '-')}.txt"
                spies[name] = (out, subprocess.Popen(
                    [str(BIN / "py-spy"), "record", "-r", "100", "-d", str(args.seconds),
                     "--format", "raw", "--nonblocking", "-o", str(out), "--pid",
                     str(server.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        cpu_before = {name: cpu_seconds(server.pid) for name, server in servers.items()}
        wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(
            ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.seconds}s",
             "--latency", "-H", f"Authorization: Bearer {token}", base + "/api/v1/auth/me"],
            capture_output=True, text=True, check=True).stdout
        wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = parse_wrk(out)
        # CPU per request does not depend on how busy the shared machine is, throughput
        # does: with both, a figure taken on a loaded machine can still be judged.
        done = requests_done(out)
        result["cpu_us_per_request"] = {
            name: round(1e6 * (cpu_seconds(server.pid) - cpu_before[name]) / done, 1)
            for name, server in servers.items()}
        result["cpu_us_per_request"]["wrk"] = round(1e6 * (
            wrk_after.ru_utime + wrk_after.ru_stime - wrk_before.ru_utime
            - wrk_before.ru_stime) / done, 1)
        result.update(mode=args.mode + (" mariadb+rabbitmq" if args.mariadb else " sqlite"),
                      connections=args.connections, seconds=args.seconds,
                      log_level=args.log_level, uvloop=args.uvloop, load_average_before=round(load_before, 2),
                      load_average_after=round(os.getloadavg()[0], 2))
        print(json.dumps(result))
        for name, (path, spy) in spies.items():
            spy.wait(timeout=60)
            print(f"\n{name}: self time by function (py-spy, busy samples)")
            for share, frame in top_functions(path):
                print(f"  {share:5.1f}%  {frame}")
    finally:
        for server in servers.values():
            server.send_signal(signal.SIGTERM)
        for server in servers.values():
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        log_file.close()
        shutil.rmtree(data_dir, ignore_errors=True)
        if args.mariadb:
            for service in ("auth", "backup", "recovery", "instances", "scheduler"):
                subprocess.run(["mariadb", "-uroot", "-h127.0.0.1", "-e",
                                f"DROP DATABASE IF EXISTS `{prefix}{service}`"], check=False)


if __name__ == "__main__":
    main()
