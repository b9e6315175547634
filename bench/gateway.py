"""Gateway throughput: authenticated `GET /api/v1/auth/me` per second and p99 latency.

Starts `reclo up` as its own process (embedded by default; `--mariadb` for MariaDB +
RabbitMQ on loopback), registers a user, then loads the gateway from a second process with
wrk (Debian's `wrk`), so client and server don't share an interpreter.

    .venv/bin/python bench/gateway.py [--mariadb] [--seconds 15] [--connections 32]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    return {"requests_per_second": rate, "p50_ms": latencies.get(50.0),
            "p99_ms": latencies.get(99.0), "non_2xx": int(errors.group(1)) if errors else 0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mariadb", action="store_true")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")

    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="reclo-bench-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECLO_")}
    env.update({"RECLO_LOG_LEVEL": "warning"})
    if args.mariadb:
        prefix = f"bench{os.getpid()}_"
        env.update({"RECLO_DATABASE_URL": "mysql+aiomysql://root@127.0.0.1:3306/",
                    "RECLO_DATABASE_PREFIX": prefix,
                    "RECLO_BUS_URL": "amqp://guest:guest@127.0.0.1:5672/",
                    "RECLO_BUS__QUEUE_PREFIX": prefix})
    server = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--data-dir", data_dir,
                               "--port", str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + "/readyz")
        call(base + "/api/v1/auth/register", {"username": "bench", "password": "bench-password"})
        token = call(base + "/api/v1/auth/login",
                     {"username": "bench", "password": "bench-password"})["token"]
        assert call(base + "/api/v1/auth/me", token=token)["username"] == "bench"
        out = subprocess.run(
            ["wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds}s", "--latency",
             "-H", f"Authorization: Bearer {token}", base + "/api/v1/auth/me"],
            capture_output=True, text=True, check=True).stdout
        result = parse_wrk(out)
        result.update(mode="mariadb+rabbitmq" if args.mariadb else "embedded",
                      connections=args.connections, seconds=args.seconds)
        print(json.dumps(result))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)
        if args.mariadb:
            for service in ("auth", "backup", "recovery", "instances", "scheduler"):
                subprocess.run(["mariadb", "-uroot", "-h127.0.0.1", "-e",
                                f"DROP DATABASE IF EXISTS `{prefix}{service}`"], check=False)


if __name__ == "__main__":
    main()
