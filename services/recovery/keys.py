"""Opening a customer's repository on the server: with the KMS key slot where the customer
enabled server-side recovery, else with the passphrase sent along with the request.

Passphrases live in a :class:`PassphraseVault`: the memory of the worker that runs the
task, nowhere else (never the database, the outbox, an event or a log line). A worker that
restarts has an empty vault; a task that still needs to read the backup then fails with
"the passphrase is needed again" unless KMS can open it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr

from services.recovery import domain
from shared.format import (
    FormatError,
    KeyUnavailable,
    ObjectStore,
    Repository,
    RepositoryNotFound,
    WrongPassphrase,
)
from shared.format.crypto import KmsUnwrap
from shared.format.diskindex import FILE_NAME
from shared.format.store import ObjectNotFound
from shared.logs import get_logger

log = get_logger(__name__)

KEYS_PREFIX = "keys/"
# The index of the backup being read, in the task's scratch folder (open_repository).
INDEX_FILE = FILE_NAME


class CannotOpen(Exception):
    """The repository can't be opened; the message is the task's failure reason."""


class PassphraseVault:
    """Passphrases by recovery id, in this process's memory only. Held as SecretStr, whose
    repr is masked: a logged traceback that shows local variables (structlog's JSON
    renderer does) shows stars, not the passphrase."""

    def __init__(self) -> None:
        self._secrets: dict[str, SecretStr] = {}

    def put(self, recovery_id: str, passphrase: SecretStr) -> None:
        self._secrets[recovery_id] = passphrase

    def get(self, recovery_id: str) -> str | None:
        secret = self._secrets.get(recovery_id)
        return secret.get_secret_value() if secret is not None else None

    def forget(self, recovery_id: str) -> None:
        self._secrets.pop(recovery_id, None)

    def __repr__(self) -> str:  # never show what it holds
        return f"PassphraseVault({len(self._secrets)} held)"


def kms_unwrapper(region: str, endpoint: str | None) -> KmsUnwrap:
    """KMS Decrypt as the format's unwrap function (called in a worker thread)."""
    client = boto3.session.Session().client(
        "kms", region_name=region, endpoint_url=endpoint,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}))

    def unwrap(key_id: str, wrapped: bytes) -> bytes:
        try:
            return client.decrypt(CiphertextBlob=wrapped, KeyId=key_id)["Plaintext"]
        except ClientError as e:
            raise KeyUnavailable(e.response.get("Error", {}).get("Message") or str(e)) from None
        except BotoCoreError as e:
            raise KeyUnavailable(str(e)) from None

    return unwrap


async def has_kms_slot(store: ObjectStore) -> bool:
    """Whether the customer enabled server-side recovery (the repository has a KMS slot)."""
    async for key in store.list(KEYS_PREFIX):
        try:
            if json.loads(await store.get(key)).get("kind") == "kms":
                return True
        except (ValueError, AttributeError, ObjectNotFound):
            continue  # an unreadable slot is the format's business, not a KMS slot
    return False


async def open_repository(store: ObjectStore, *, passphrase: str | None,
                          kms_unwrap: KmsUnwrap | None, index_at: Path | None = None) -> Repository:
    """The passphrase when there is one, else KMS; CannotOpen with the reason otherwise.

    ``index_at``: where to keep the index on disk for this run (an SQLite file in the
    task's scratch folder), so a worker's memory does not grow with the customer's
    repository; the caller closes the repository, then may delete the file."""
    if passphrase is None and kms_unwrap is None:
        raise CannotOpen(domain.PASSPHRASE_NEEDED_AGAIN)
    repo = await _open(store, passphrase, kms_unwrap)
    try:
        if index_at is not None:  # in a thread: SQLite checks and empties what it finds
            await asyncio.to_thread(repo.keep_index_in, index_at)
        await repo.load_index()
        if index_at is not None and repo.index_in_memory_because:
            log.warning("the backup's index is kept in memory", reason=repo.index_in_memory_because)
    except FormatError as e:
        repo.close()
        raise CannotOpen(domain.damaged_reason(str(e))) from None
    except BaseException:
        repo.close()
        raise
    return repo


async def _open(store: ObjectStore, passphrase: str | None, kms_unwrap: KmsUnwrap | None) -> Repository:
    try:
        if passphrase is not None:
            return await Repository.open(store, passphrase, load_index=False)
        return await Repository.open(store, None, kms_unwrap=kms_unwrap, load_index=False)
    except KeyUnavailable as e:
        if passphrase is not None:
            raise CannotOpen(f"the backup cannot be opened with a passphrase: {e}") from None
        raise CannotOpen(f"the backup's KMS key could not open it ({e}); request the "
                         "recovery again with the passphrase") from None
    except WrongPassphrase:
        raise CannotOpen(domain.WRONG_PASSPHRASE) from None
    except RepositoryNotFound:
        raise CannotOpen("the backup's repository is no longer in the object store") from None
    except FormatError as e:
        raise CannotOpen(domain.damaged_reason(str(e))) from None
    # An object store that can't be reached is not a reason to fail: the error propagates
    # and the task is tried again by the next sweep.

