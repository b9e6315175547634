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
    restorer     restoring safely, verifying every chunk
    checker      checking structure and, optionally, data

Depends on nothing server-side: the agent installs it without a database or a broker.
"""

from .archiver import Archiver, BackupResult, Source
from .checker import Checker, CheckResult, Problem
from .crypto import ScryptParams
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
