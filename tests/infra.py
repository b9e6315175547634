"""Where the tests find MariaDB, RabbitMQ and the S3 endpoint.

In order: an explicit URL from the environment (``RECLO_TEST_MARIADB_URL``,
``RECLO_TEST_RABBITMQ_URL``, ``RECLO_TEST_S3_ENDPOINT``); a testcontainers container where a
Docker engine answers; the services on loopback that `.ci/run` makes sure are running. A
service that doesn't answer fails the tests that need it, loudly: nothing is skipped.
"""

from __future__ import annotations

import functools
import os
import socket

LOCAL_MARIADB = "mysql+aiomysql://root@127.0.0.1:3306/"
LOCAL_RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/"
LOCAL_S3 = "http://127.0.0.1:5000"


@functools.cache
def docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


_containers: list = []


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _require(url: str, host: str, port: int, what: str) -> str:
    if not _answers(host, port):
        raise RuntimeError(f"{what} does not answer on {host}:{port}; run `bash .ci/run` "
                           f"or start it (see docs/development.md)")
    return url


@functools.cache
def mariadb_url() -> str:
    if url := os.environ.get("RECLO_TEST_MARIADB_URL"):
        return url
    if docker_available():
        from testcontainers.mysql import MySqlContainer

        container = MySqlContainer("mariadb:10.11", username="root", password="test")
        container.start()
        _containers.append(container)
        host, port = container.get_container_host_ip(), container.get_exposed_port(3306)
        return f"mysql+aiomysql://root:test@{host}:{port}/"
    return _require(LOCAL_MARIADB, "127.0.0.1", 3306, "MariaDB")


@functools.cache
def rabbitmq_url() -> str:
    if url := os.environ.get("RECLO_TEST_RABBITMQ_URL"):
        return url
    if docker_available():
        from testcontainers.rabbitmq import RabbitMqContainer

        container = RabbitMqContainer("rabbitmq:3.13")
        container.start()
        _containers.append(container)
        host, port = container.get_container_host_ip(), container.get_exposed_port(5672)
        return f"amqp://guest:guest@{host}:{port}/"
    return _require(LOCAL_RABBITMQ, "127.0.0.1", 5672, "RabbitMQ")


@functools.cache
def s3_endpoint() -> str:
    if url := os.environ.get("RECLO_TEST_S3_ENDPOINT"):
        return url
    return _require(LOCAL_S3, "127.0.0.1", 5000, "the S3 endpoint (moto_server)")


def stop_containers() -> None:
    while _containers:
        _containers.pop().stop()
