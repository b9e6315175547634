"""Everything that can go wrong with a repository, each with its own exception.

Callers (the agent's CLI, the recovery worker) map these to exit codes and messages, so
each names what it is about: the pack and offset of a corrupt blob, the file a restore
could not complete, the path a manifest tried to escape with.
"""

from __future__ import annotations


class FormatError(Exception):
    """Base class; also raised as is for an object that does not parse as the format."""


class WrongPassphrase(FormatError):
    def __init__(self) -> None:
        super().__init__("wrong passphrase: no key slot of this repository opens with it")


class KeyUnavailable(FormatError):
    """No key slot could be opened with what the caller supplied (e.g. no KMS slot)."""


class DecryptionFailed(FormatError):
    """An authenticated decryption failed: wrong key, or the bytes were changed."""


class CorruptBlob(FormatError):
    def __init__(self, pack_id: str, offset: int, reason: str, blob_id: str | None = None):
        self.pack_id = pack_id
        self.offset = offset
        self.reason = reason
        self.blob_id = blob_id
        super().__init__(f"corrupt blob in pack {pack_id} at offset {offset}: {reason}")


class MissingDictionary(FormatError):
    """The compression dictionary a blob names is not in the repository."""

    def __init__(self, dictionary_id: bytes, key: str):
        self.dictionary_id = dictionary_id
        super().__init__(f"compression dictionary {dictionary_id.hex()} is missing ({key})")


class BlobWithoutDictionary(CorruptBlob):
    """A blob that cannot be opened because its dictionary is missing: its own bytes may
    be intact (a check reports the dictionary, not the blob)."""

    def __init__(self, pack_id: str, offset: int, blob_id: str | None, missing: MissingDictionary):
        self.dictionary_id = missing.dictionary_id
        super().__init__(pack_id, offset, str(missing), blob_id)


class CorruptObject(FormatError):
    def __init__(self, key: str, reason: str):
        self.key = key
        self.reason = reason
        super().__init__(f"corrupt object {key}: {reason}")


class MissingPack(FormatError):
    def __init__(self, pack_id: str):
        self.pack_id = pack_id
        super().__init__(f"pack {pack_id} is missing from the repository")


class MissingBlob(FormatError):
    def __init__(self, blob_id: str):
        self.blob_id = blob_id
        super().__init__(f"blob {blob_id} is not in the index")


class UnsafePath(FormatError):
    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"refusing unsafe path {path!r}: {reason}")


class SourceNotFound(FormatError):
    def __init__(self, path: str):
        self.path = path
        super().__init__(f"backup source {path!r} does not exist")


class RepositoryExists(FormatError):
    pass


class RepositoryNotFound(FormatError):
    pass


class SnapshotNotFound(FormatError):
    pass


class PathNotFound(FormatError):
    def __init__(self, path: str):
        self.path = path
        super().__init__(f"{path!r} is not in the snapshot")


class RestoreIncomplete(FormatError):
    """Everything restorable was restored; these files have damaged or missing parts."""

    def __init__(self, damaged: list[tuple[str, Exception]]):
        self.damaged = damaged
        names = ", ".join(path for path, _ in damaged[:10])
        more = f" and {len(damaged) - 10} more" if len(damaged) > 10 else ""
        details = "; ".join(f"{path}: {error}" for path, error in damaged[:3])
        super().__init__(f"{len(damaged)} file(s) could not be restored intact: {names}{more} ({details})")


# --- object store errors (raised by every ObjectStore adapter) ---


class StoreError(FormatError):
    pass


class ObjectExists(StoreError):
    def __init__(self, key: str):
        self.key = key
        super().__init__(f"object {key} already exists (the store is append-only)")


class ObjectNotFound(StoreError):
    def __init__(self, key: str):
        self.key = key
        super().__init__(f"object {key} does not exist")


class InvalidKey(StoreError):
    def __init__(self, key: str, reason: str):
        self.key = key
        super().__init__(f"invalid object key {key!r}: {reason}")
