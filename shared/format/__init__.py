"""The ReClo repository format: how backups are cut, sealed, packed and found again.

Read in this order (docs/format.md describes the bytes):

    constants    the numbers, each with its reason
    errors       what can go wrong, one exception each
    crypto       master key, keyed chunk ids, AES-256-GCM sealing, key slots
    compression  zstd where it pays, raw where it doesn't
    chunker      content-defined chunks for files, aligned fixed chunks for images, holes
    pack         immutable packs of sealed blobs with a sealed header
    index        blob id -> pack, offset, length
    snapshot     snapshots, trees and their nodes
    store        the append-only object store port, and a local-folder adapter
    repository   object layout, init/open, the blob saver (write order: packs, index, snapshot)
    progress     how far a backup or a restore is, for a progress bar
    archiver     backing up folders and images (full or incremental)
    inplace_helper  an incremental's files rewritten in place, cut in a helper process
    restorer     restoring safely, verifying every chunk
    checker      checking structure and, optionally, data

Depends on nothing server-side: the agent installs it without a database or a broker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# The names re-exported here, by the module that defines them, loaded on first use
# (PEP 562): the in-place helper process imports the chunker and compression only, not
# the whole package (20 MiB resident instead of 32).
_EXPORTS = {
    "archiver": ("Archiver", "BackupResult", "Source"),
    "checker": ("Checker", "CheckResult", "Problem"),
    "kdf": ("ScryptParams",),
    "errors": (
        "CorruptBlob", "CorruptObject", "FormatError", "KeyUnavailable", "MissingBlob", "MissingPack",
        "ObjectExists", "ObjectNotFound", "PathNotFound", "RepositoryExists", "RepositoryNotFound",
        "RestoreIncomplete", "SnapshotNotFound", "SourceNotFound", "StoreError", "UnsafePath",
        "WrongPassphrase",
    ),
    "progress": ("Progress",),
    "repository": ("Repository",),
    "restorer": ("Restorer", "RestoreResult"),
    "snapshot": ("FULL", "INCREMENTAL", "Snapshot"),
    "store": ("LocalFolderStore", "ObjectStore"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))


if TYPE_CHECKING:
    from .archiver import Archiver, BackupResult, Source
    from .checker import Checker, CheckResult, Problem
    from .kdf import ScryptParams
    from .errors import (
        CorruptBlob,
        CorruptObject,
        FormatError,
        KeyUnavailable,
        MissingBlob,
        MissingPack,
        ObjectExists,
        ObjectNotFound,
        PathNotFound,
        RepositoryExists,
        RepositoryNotFound,
        RestoreIncomplete,
        SnapshotNotFound,
        SourceNotFound,
        StoreError,
        UnsafePath,
        WrongPassphrase,
    )
    from .progress import Progress
    from .repository import Repository
    from .restorer import Restorer, RestoreResult
    from .snapshot import FULL, INCREMENTAL, Snapshot
    from .store import LocalFolderStore, ObjectStore

__all__ = [
    "Archiver",
    "BackupResult",
    "Checker",
    "CheckResult",
    "CorruptBlob",
    "CorruptObject",
    "FormatError",
    "FULL",
    "INCREMENTAL",
    "KeyUnavailable",
    "LocalFolderStore",
    "MissingBlob",
    "MissingPack",
    "ObjectExists",
    "ObjectNotFound",
    "ObjectStore",
    "PathNotFound",
    "Problem",
    "Progress",
    "Repository",
    "RepositoryExists",
    "RepositoryNotFound",
    "RestoreIncomplete",
    "Restorer",
    "RestoreResult",
    "ScryptParams",
    "Snapshot",
    "SnapshotNotFound",
    "Source",
    "SourceNotFound",
    "StoreError",
    "UnsafePath",
    "WrongPassphrase",
]
