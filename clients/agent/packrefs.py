"""Telling the backup service which packs things reference. It cannot read the encrypted
repository, yet its garbage collection must know what to keep and what to delete:

- a snapshot's packs, sent with the commit (BackupCommit.packs): what the service keeps
  while it keeps the backup, and checks exists before it records it;
- an index file's packs, declared when it is uploaded: what lets the service delete the
  index file once all those packs are gone, so stale entries do not pile up.

An incremental reuses chunks stored by earlier backups, so a snapshot's packs are not
"the packs this backup uploaded". Every directory of a backup passes through the blob
saver, changed or not (saved as a tree blob, or reused from the parent unchanged), so a
saver that reads each tree as it goes sees every chunk the snapshot references: one
already indexed names its pack at once. One still on its way (in a pack of this backup not
indexed yet) is not looked up at all: every pack this backup stores counts as referenced
when it is indexed (a pack holding only chunks of a file that failed half-way is kept a
little longer than needed, never deleted too soon). Nothing is downloaded.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar

from shared.format import FormatError, Repository
from shared.format.constants import INDEX_PREFIX
from shared.format.dictionary import DictionaryEncoder
from shared.format.index import IndexedPack
from shared.format.pack import BlobType
from shared.format.repository import BlobSaver
from shared.format.snapshot import Node, Tree
from shared.format.store import Bytes, ForwardingStore

# The packs of the index file being written by this task (set around write_index).
_INDEX_PACKS: ContextVar[list[str] | None] = ContextVar("reclo_index_packs", default=None)


class PackReferences:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._packs: set[str] = set()
        self._pending: set[bytes] = set()  # blobs in packs not indexed yet when seen
        self._lock = threading.Lock()

    def note_tree(self, tree_id: bytes, nodes: list[Node], saver: BlobSaver) -> None:
        """Called by the saver (from worker threads or the loop) for every tree of the
        backup, saved or reused."""
        ids = [tree_id]
        for node in nodes:
            ids.extend(ref.id for ref in node.content or () if ref.id is not None)
        in_flight = saver.in_flight(ids)  # their packs are noted when indexed
        wanted = [blob_id for blob_id in ids if blob_id not in in_flight]
        found = self.repo.index.lookup_many(wanted)
        with self._lock:
            self._packs.update(location.pack_id for location in found.values())
            self._pending.update(blob_id for blob_id in wanted if blob_id not in found)

    def note_packs(self, packs) -> None:
        """Packs referenced wholesale (those of the parent, for folders kept unseen)."""
        with self._lock:
            self._packs.update(packs)

    def packs(self) -> list[str]:
        """Every pack the snapshot references; call after the saver was flushed. (A blob
        neither indexed nor in flight when its tree was noted is looked up once more.)"""
        for blob_id in self._pending:
            loc = self.repo.index.lookup(blob_id)
            if loc is None:
                raise FormatError(f"blob {blob_id.hex()} of this backup is in no stored pack")
            self._packs.add(loc.pack_id)
        self._pending.clear()
        return sorted(self._packs)


class RecordingRepository(Repository):
    """A Repository whose savers report every tree to `references` (when set), and whose
    index files are stored with the packs they describe (see DeclaringStore)."""

    references: PackReferences | None = None

    def saver(self) -> BlobSaver:
        if self.references is None:
            return super().saver()
        return _RecordingSaver(self, self.references)

    async def write_index(self, packs: list[IndexedPack]) -> str:
        token = _INDEX_PACKS.set([p.id for p in packs])
        try:
            return await super().write_index(packs)
        finally:
            _INDEX_PACKS.reset(token)


class _RecordingSaver(BlobSaver):
    def __init__(self, repo: Repository, references: PackReferences) -> None:
        super().__init__(repo)
        self.references = references

    def save(self, blob_type: BlobType, data: bytes, blob_id: bytes | None = None,
             dictionary: DictionaryEncoder | None = None) -> tuple[bytes, bool]:
        blob_id, new = super().save(blob_type, data, blob_id, dictionary)
        if blob_type is BlobType.TREE:
            self.references.note_tree(blob_id, Tree.decode(data).nodes, self)
        return blob_id, new

    def save_tree(self, nodes: list[Node]) -> tuple[bytes, bool]:
        # as save() does for a tree, without decoding what was just encoded
        tree_id, new = super().save(BlobType.TREE, Tree(nodes).encode())
        self.references.note_tree(tree_id, nodes, self)
        return tree_id, new

    def reuse_tree(self, tree_id: bytes, nodes: list[Node]) -> None:
        self.references.note_tree(tree_id, nodes, self)

    def _on_indexed(self, pack_id: str) -> None:
        self.references.note_packs([pack_id])


class DeclaringStore(ForwardingStore):
    """Passes an index file's packs to a store that takes them (`put(..., packs=)`, the
    remote store); everything else goes straight through."""

    async def put(self, key: str, data: Bytes) -> None:
        packs = _INDEX_PACKS.get()
        if packs is not None and key.startswith(INDEX_PREFIX):
            await self.inner.put(key, data, packs=packs)
        else:
            await self.inner.put(key, data)

