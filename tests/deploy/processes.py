"""ReClo services as separate processes, the way a container runs them (`reclo serve NAME`),
on the real MariaDB, RabbitMQ and S3 endpoint (moto) under names unique to one test, removed
afterwards; and the whole topology (every service, the gateway in front)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import aio_pika
import boto3
import pymysql
from botocore.config import Config
from sqlalchemy.engine import make_url

from services.registry import names
from shared.settings import Settings
from tests import infra

RECLO = Path(sys.executable).parent / "reclo"
# Start-up imports everything and migrates on MariaDB: seconds normally, more on a busy CI.
START_SECONDS = 90
# A service must stop within this after SIGTERM (Kubernetes' default grace is 30 s).
STOP_SECONDS = 20
# moto accepts any credentials; these are its documented dummy values.
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}
# S3's DeleteObjects takes at most this many keys per request.
S3_DELETE_BATCH = 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Deployment:
    """What the processes of one test share: the database prefix, the queue prefix, the
    buckets, the signing key, and the S3 endpoint; like one compose project or one
    namespace. Each process has its own data folder under ``data_dir``, as each container
    has its own volume."""

    def __init__(self, unique: str, data_dir: Path) -> None:
        self.database_url = infra.mariadb_url()
        self.bus_url = infra.rabbitmq_url()
        self.s3_endpoint = infra.s3_endpoint()
        self.database_prefix = f"t{unique}_"
        self.queue_prefix = f"t{unique}"
        # Its own exchange too, so no other test's events reach these processes' queues.
        self.exchange = f"t{unique}.events"
        # Bucket names are global to the endpoint: the defaults would mix tests' objects.
        self.backup_bucket = f"t{unique}-client-backups"
        self.import_bucket = f"t{unique}-imported-vms"
        self.data_dir = data_dir
        self.key = secrets.token_hex(32)

    def environment(self, service: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECLO_")}
        env.update(MOTO_CREDENTIALS)
        env.update({
            "RECLO_DATABASE_URL": self.database_url,
            "RECLO_DATABASE_PREFIX": self.database_prefix,
            "RECLO_BUS_URL": self.bus_url,
            "RECLO_BUS__QUEUE_PREFIX": self.queue_prefix,
            "RECLO_BUS__EXCHANGE": self.exchange,
            "RECLO_S3_ENDPOINT": self.s3_endpoint,
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "RECLO_BACKUP__BUCKET": self.backup_bucket,
            "RECLO_RECOVERY__IMPORT_BUCKET": self.import_bucket,
            # As docker-compose.yml: recovered disks are kept for download.
            "RECLO_RECOVERY__TARGETS": '["local"]',
            "RECLO_INTERNAL_KEY": self.key,
            "RECLO_DATA_DIR": str(self.data_dir / service),
            "RECLO_LOG_FORMAT": "json",
        })
        return env

    def remove(self, services: Iterable[str]) -> None:
        """Everything the processes made: databases, queues, the exchange, the buckets."""
        services = list(services)
        try:
            self.drop_databases(services)
            self.delete_queues(services)
        finally:
            self.delete_buckets()
        assert self.databases() == set()
        assert self.buckets() == set()

    def drop_databases(self, services: Iterable[str]) -> None:
        url = make_url(self.database_url)
        connection = pymysql.connect(host=url.host, port=url.port or 3306,
                                     user=url.username, password=url.password or "")
        try:
            with connection.cursor() as cursor:
                for service in services:
                    cursor.execute(f"DROP DATABASE IF EXISTS `{self.database_prefix}{service}`")
        finally:
            connection.close()

    def databases(self) -> set[str]:
        url = make_url(self.database_url)
        connection = pymysql.connect(host=url.host, port=url.port or 3306,
                                     user=url.username, password=url.password or "")
        try:
            with connection.cursor() as cursor:
                cursor.execute("SHOW DATABASES LIKE %s",
                               (self.database_prefix.replace("_", r"\_") + "%",))
                return {row[0] for row in cursor.fetchall()}
        finally:
            connection.close()

    def revision(self, service: str) -> str | None:
        url = make_url(self.database_url)
        connection = pymysql.connect(host=url.host, port=url.port or 3306,
                                     user=url.username, password=url.password or "",
                                     database=f"{self.database_prefix}{service}")
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT version_num FROM alembic_version")
                row = cursor.fetchone()
                return row[0] if row else None
        finally:
            connection.close()

    def delete_queues(self, services: Iterable[str]) -> None:
        """Each service's queue, its retry and dead queues (shared/bus/rabbitmq.py), and
        the exchange."""
        delays = Settings().bus.retry_delays  # the processes ran with the defaults

        async def delete() -> None:
            connection = await aio_pika.connect(self.bus_url)
            try:
                channel = await connection.channel()
                for service in services:
                    queue = f"{self.queue_prefix}.{service}"
                    for name in [queue, f"{queue}.dead",
                                 *(f"{queue}.retry.{max(1, round(d * 1000))}ms"
                                   for d in delays)]:
                        await channel.queue_delete(name, if_unused=False, if_empty=False)
                await channel.exchange_delete(self.exchange)
            finally:
                await connection.close()

        asyncio.run(delete())

    def s3(self):
        return boto3.client("s3", endpoint_url=self.s3_endpoint,
                            region_name=MOTO_CREDENTIALS["AWS_DEFAULT_REGION"],
                            aws_access_key_id=MOTO_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=MOTO_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                            config=Config(signature_version="s3v4",
                                          s3={"addressing_style": "path"}))

    def buckets(self) -> set[str]:
        """This deployment's buckets that exist on the endpoint."""
        mine = {self.backup_bucket, self.import_bucket}
        return {b["Name"] for b in self.s3().list_buckets()["Buckets"]} & mine

    def objects(self, bucket: str) -> list[str]:
        keys = []
        for page in self.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    def delete_buckets(self) -> None:
        """Each bucket that exists: unfinished multipart uploads, objects, the bucket."""
        s3 = self.s3()
        for bucket in self.buckets():
            for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
                s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                          UploadId=upload["UploadId"])
            keys = self.objects(bucket)
            for start in range(0, len(keys), S3_DELETE_BATCH):
                s3.delete_objects(Bucket=bucket, Delete={
                    "Objects": [{"Key": key} for key in keys[start:start + S3_DELETE_BATCH]]})
            s3.delete_bucket(Bucket=bucket)


class ServiceProcess:
    """One `reclo serve NAME --migrate`, its output in a log file."""

    def __init__(self, name: str, deployment: Deployment, log_dir: Path,
                 extra_env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = log_dir / f"{name}.log"
        env = deployment.environment(name)
        env[f"RECLO_{name.upper()}__PORT"] = str(self.port)
        env[f"RECLO_{name.upper()}__HOST"] = "127.0.0.1"
        env.update(extra_env or {})
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(RECLO), "serve", name, "--migrate"], env=env,
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, path: str, status: int = 200, timeout: float = START_SECONDS) -> None:
        """Until GET path answers ``status``; fails with the log if the process died."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n"
                                     f"{self.output()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=5) as response:
                    last = response.status
            except urllib.error.HTTPError as exc:
                last = exc.code
            except OSError as exc:
                last = repr(exc)
            if last == status:
                return
            time.sleep(0.2)
        raise AssertionError(f"{self.name}{path} answered {last}, not {status}, within "
                             f"{timeout}s:\n{self.output()[-4000:]}")

    def terminate(self) -> int:
        """SIGTERM, as Kubernetes and compose stop a container; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_SECONDS)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()

    def log_lines(self) -> tuple[list[dict], list[str]]:
        """The JSON log lines so far, and any line that is not JSON (a traceback printed
        past the logger, say)."""
        records, stray = [], []
        for line in self.output().splitlines():
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                stray.append(line)
        return records, stray


class Topology:
    """Every registered service as its own process, the gateway started last and told where
    each one listens (RECLO_<SERVICE>__URL): what docker-compose.yml and deploy/k8s run."""

    def __init__(self, deployment: Deployment, log_dir: Path) -> None:
        self.deployment = deployment
        self.processes: dict[str, ServiceProcess] = {}
        try:
            for name in names():
                if name != "gateway":
                    self.processes[name] = ServiceProcess(name, deployment, log_dir)
            for process in self.processes.values():
                process.wait_for("/readyz")
            where = {f"RECLO_{name.upper()}__URL": process.url
                     for name, process in self.processes.items()}
            self.processes["gateway"] = ServiceProcess("gateway", deployment, log_dir, where)
            self.gateway.wait_for("/readyz")
        except BaseException:
            self.stop()
            raise

    @property
    def gateway(self) -> ServiceProcess:
        return self.processes["gateway"]

    def stop(self) -> dict[str, int]:
        """SIGTERM to each, the gateway first (it came up last); their exit statuses."""
        return {name: process.terminate()
                for name, process in reversed(self.processes.items())}
