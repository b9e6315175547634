"""ReClo the way customers run it: `reclo-agent` registered with a server, uploading
through presigned URLs to S3 (moto_server here), on the same machine.

Started for the benchmark and stopped after it: `moto_server` and `reclo up` (every
service in one process, SQLite, in-process bus) with RECLO_S3_ENDPOINT pointing at moto.
Both share the machine's cores with the agent, as a local S3 endpoint would; the peak RSS
measured is the agent's alone. The repository's size is the bucket's (one user, one host).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from backup_engines import ROOT, ReClo, clean_env
from measure import FolderSize, free_port, run_quiet, stop_processes

USERNAME = "bench"
PASSWORD = "benchmark password"  # a throw-away user on a throw-away server
HOST = "bench-host"
BUCKET = "reclo-client-backups"  # BackupSettings.bucket's default
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
# Both servers are up within seconds on this machine; a loaded machine gets more time.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


class ReCloS3(ReClo):
    name = "ReClo-S3"
    repeatable = False  # the repository lives in the services and moto

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.bin = Path(sys.executable).parent
        self.s3_url = f"http://127.0.0.1:{free_port()}"
        self.server_url = f"http://127.0.0.1:{free_port()}"
        self.processes: list[subprocess.Popen] = []
        self.logs_open: list = []

    def repo_args(self) -> list[str]:
        return []  # the configured server

    def prepare(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self._start("moto", [str(self.bin / "moto_server"), "-H", "127.0.0.1", "-p", self.s3_url.rsplit(":", 1)[1]],
                    clean_env(), self.s3_url + "/moto-api/")
        server_env = clean_env(RECLO_S3_ENDPOINT=self.s3_url, RECLO_LOG_LEVEL="warning", **S3_CREDENTIALS)
        self._start("server", [str(self.bin / "reclo"), "up", "--data-dir", str(self.work / "server"),
                               "--port", self.server_url.rsplit(":", 1)[1]], server_env, self.server_url + "/healthz")
        request = urllib.request.Request(self.server_url + "/api/v1/auth/register", method="POST",
                                         data=json.dumps({"username": USERNAME, "password": PASSWORD}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=30).close()
        env = {**self.env, "RECLO_PASSWORD": PASSWORD}
        run_quiet(self.agent("register", "--server", self.server_url, "--username", USERNAME, "--host", HOST),
                  env=env, cwd=ROOT)
        run_quiet(self.agent("init"), env=self.env, cwd=ROOT)

    def _start(self, name: str, argv: list[str], env: dict[str, str], ready_url: str) -> None:
        log = open(self.work / f"{name}.log", "wb")
        self.logs_open.append(log)
        self.processes.append(subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                               stderr=subprocess.STDOUT))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                urllib.request.urlopen(ready_url, timeout=2).close()
                return
            except OSError:
                if self.processes[-1].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start; see {self.work / f'{name}.log'}") from None
                time.sleep(0.2)

    def repository_size(self) -> FolderSize:
        import boto3  # the server side's dependency, present in the project's environment

        s3 = boto3.client("s3", endpoint_url=self.s3_url, region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
                          aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        total = count = 0
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
                for obj in page.get("Contents", []):
                    total += obj["Size"]
                    count += 1
        except s3.exceptions.NoSuchBucket:
            pass  # created by the first backup session
        return FolderSize(total, total, count)

    def close(self) -> None:
        stop_processes(self.processes, STOP_TIMEOUT)
        for log in self.logs_open:
            log.close()
