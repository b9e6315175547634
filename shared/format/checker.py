"""Checking a repository: is every snapshot restorable?

Two depths:

- structure (always): every index file opens; every indexed pack exists with the size
  the index records; every snapshot opens, and every tree and chunk it references is
  in the index and in a pack that exists. Packs nobody indexed are reported as
  warnings (a killed backup leaves them; `recover_unindexed_packs` adopts them).
- data (read_data=True, or a random subset of packs in percent): each pack is downloaded,
  its SHA-256 compared with its id, and every blob the index places in it decrypted and
  verified against its id; the pack's own header is compared with the index.

Each problem names the pack it is about and the files (snapshot and path) it damages.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field

from .constants import DICTIONARIES_PREFIX, SNAPSHOTS_PREFIX
from .errors import BlobWithoutDictionary, CorruptBlob, FormatError, MissingBlob, MissingPack, ObjectNotFound
from .index import BlobLocation
from .pack import PackEntry, open_blob, read_pack
from .repository import Repository, pack_key
from .snapshot import DIR, FILE, IMAGE

# Affected files listed per problem; beyond this only the count grows.
_MAX_PATHS = 50


@dataclass
class Problem:
    kind: str  # missing-pack, pack-size, corrupt-pack, corrupt-blob, missing-blob, missing-dictionary, unreadable-tree, corrupt-index, corrupt-snapshot, unindexed-pack
    message: str
    pack_id: str | None = None
    paths: list[str] = field(default_factory=list)  # "<snapshot id prefix>:<path>"
    affected: int = 0

    def add_path(self, path: str) -> None:
        self.affected += 1
        if len(self.paths) < _MAX_PATHS:
            self.paths.append(path)

    def __str__(self) -> str:
        text = self.message
        if self.affected:
            more = f" (+{self.affected - len(self.paths)} more)" if self.affected > len(self.paths) else ""
            text += "; affects " + ", ".join(self.paths) + more
        return text


@dataclass
class CheckResult:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    snapshots: int = 0
    packs: int = 0
    packs_read: int = 0
    blobs_verified: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


class Checker:
    def __init__(self, repo: Repository, *, concurrency: int = 2):
        self.repo = repo
        self.concurrency = concurrency
        self._dictionaries: set[str] = set()  # ids (hex) of the dictionaries the store holds
        self._missing_dictionaries: dict[bytes, Problem] = {}
        # blob id -> the missing dictionary it was compressed with (read_data): a file may
        # use chunks another file stored, compressed with that file's dictionary
        self._without_dictionary: dict[bytes, bytes] = {}

    async def check(self, *, read_data: bool = False, subset_percent: float | None = None) -> CheckResult:
        """read_data: verify every pack's content; subset_percent: verify that share of packs."""
        result = CheckResult()
        for e in await self.repo.load_index(strict=False):
            result.problems.append(Problem("corrupt-index", str(e)))

        indexed = self.repo.index.packs()
        stored = set(await self.repo.list_packs())
        result.packs = len(indexed)
        pack_problems: dict[str, Problem] = {}
        for pack_id, size in indexed.items():
            if pack_id not in stored:
                pack_problems[pack_id] = Problem("missing-pack", f"pack {pack_id} is missing", pack_id)
                continue
            try:
                actual = await self.repo.store.size(pack_key(pack_id))
            except ObjectNotFound:
                actual = -1
            if actual != size:
                pack_problems[pack_id] = Problem(
                    "pack-size", f"pack {pack_id} is {actual} bytes, the index says {size}", pack_id
                )
        for pack_id in sorted(stored - indexed.keys()):
            result.warnings.append(Problem("unindexed-pack", f"pack {pack_id} is in no index", pack_id))

        self._dictionaries = {k.rsplit("/", 1)[-1] async for k in self.repo.store.list(DICTIONARIES_PREFIX)}
        self._missing_dictionaries = {}
        self._without_dictionary = {}
        bad_blobs: dict[bytes, str] = {}  # blob id -> pack id whose copy of it is bad
        if read_data or subset_percent:
            readable = sorted(p for p in indexed if p not in pack_problems)
            if not read_data:
                count = math.ceil(len(readable) * min(max(subset_percent or 0, 0), 100) / 100)
                readable = sorted(random.sample(readable, count))
            await self._read_packs(readable, pack_problems, bad_blobs, result)

        await self._walk_snapshots(result, pack_problems, bad_blobs)
        result.problems.extend(pack_problems.values())
        result.problems.extend(self._missing_dictionaries.values())
        return result

    async def _read_packs(
        self, pack_ids: list[str], problems: dict[str, Problem], bad_blobs: dict[bytes, str], result: CheckResult
    ) -> None:
        by_pack: dict[str, list[PackEntry]] = defaultdict(list)
        wanted = set(pack_ids)
        for blob_id, loc in self.repo.index.items():
            if loc.pack_id in wanted:
                by_pack[loc.pack_id].append(loc.entry(blob_id))
        gate = asyncio.Semaphore(self.concurrency)

        async def one(pack_id: str) -> None:
            async with gate:
                try:
                    data = await self.repo.store.get(pack_key(pack_id))
                except ObjectNotFound:
                    problems[pack_id] = Problem("missing-pack", f"pack {pack_id} is missing", pack_id)
                    return
                bad, verified, notes, undictionaried = await self.repo.dictionaries.in_thread(
                    self._verify_pack, pack_id, data, by_pack[pack_id])
            result.packs_read += 1
            for blob_id, dictionary_id in undictionaried.items():  # not known bad: the dictionary is gone
                self._missing_dictionary(dictionary_id)
                self._without_dictionary[blob_id] = dictionary_id
            result.blobs_verified += verified
            for entry, error in bad:
                bad_blobs[entry.id] = pack_id
            if bad or notes:
                details = notes + [str(error) for _, error in bad[:3]]
                problems[pack_id] = Problem(
                    "corrupt-blob" if bad else "corrupt-pack",
                    f"pack {pack_id}: {len(bad)} damaged blob(s); " + "; ".join(details),
                    pack_id,
                )

        await asyncio.gather(*(one(p) for p in pack_ids))

    def _verify_pack(
        self, pack_id: str, data: bytes, entries: list[PackEntry]
    ) -> tuple[list[tuple[PackEntry, Exception]], int, list[str], dict[bytes, bytes]]:
        """The blobs found bad, how many were verified, notes on the pack, and the blobs
        that need a missing dictionary, with its id (neither bad nor verified)."""
        notes = []
        digest = hashlib.sha256(data).hexdigest()
        if digest != pack_id:
            notes.append("content does not match its id (sha256)")
        try:
            # the hash was checked above; read the header even if it failed
            header = {e.id: e for e in read_pack(self.repo.key, data, digest)}
            for e in entries:
                if header.get(e.id) != e:
                    notes.append(f"header and index disagree about blob {e.id.hex()}")
                    break
        except FormatError as e:
            notes.append(f"header unreadable: {e}")
        bad = []
        undictionaried: dict[bytes, bytes] = {}  # blob id -> the missing dictionary it needs
        for e in entries:
            try:
                open_blob(self.repo.key, e, data[e.offset : e.offset + e.length], pack_id=pack_id,
                          dictionaries=self.repo.dictionaries)
            except BlobWithoutDictionary as error:
                undictionaried[e.id] = error.dictionary_id
            except CorruptBlob as error:
                bad.append((e, error))
        return bad, len(entries) - len(bad) - len(undictionaried), notes, undictionaried

    async def _walk_snapshots(
        self, result: CheckResult, pack_problems: dict[str, Problem], bad_blobs: dict[bytes, str]
    ) -> None:
        try:
            snapshot_ids = [i async for i in self._snapshot_ids()]
        except FormatError as e:
            result.problems.append(Problem("corrupt-snapshot", str(e)))
            return
        visited: set[bytes] = set()  # a subtree shared by many snapshots is checked once

        def locate(blob_id: bytes) -> BlobLocation | None:
            return self.repo.index.lookup(blob_id)

        def affect(pack_id: str, where: str) -> None:
            pack_problems[pack_id].add_path(where)

        for sid in snapshot_ids:
            try:
                snapshot = await self.repo.load_snapshot(sid)
            except FormatError as e:
                result.problems.append(Problem("corrupt-snapshot", f"snapshot {sid}: {e}"))
                continue
            result.snapshots += 1
            stack: list[tuple[bytes, str]] = [(snapshot.tree, "")]
            while stack:
                tree_id, path = stack.pop()
                if tree_id in visited:
                    continue
                visited.add(tree_id)
                where = f"{sid[:8]}:{path or '/'}"
                loc = locate(tree_id)
                if loc is not None and loc.pack_id in pack_problems:
                    affect(loc.pack_id, where)
                try:
                    tree = await self.repo.load_tree(tree_id)
                except (MissingBlob, MissingPack, CorruptBlob, FormatError) as e:
                    if loc is None or loc.pack_id not in pack_problems:
                        result.problems.append(Problem("unreadable-tree", f"tree of {where} unreadable: {e}"))
                    continue
                for node in tree.nodes:
                    child = f"{path}/{node.name}" if path else node.name
                    if node.type == DIR and node.subtree is not None:
                        stack.append((node.subtree, child))
                    elif node.type in (FILE, IMAGE):
                        self._check_content(sid, child, node, pack_problems, bad_blobs, result)

    def _check_content(self, sid, path, node, pack_problems, bad_blobs, result) -> None:
        where = f"{sid[:8]}:{path}"
        reported: set[str | bytes] = set()  # pack ids, "missing", dictionary ids
        if node.dictionary is not None and node.dictionary.hex() not in self._dictionaries:
            # Its chunks were compressed with it (docs/format.md §3): none of them opens.
            self._missing_dictionary(node.dictionary).add_path(where)
            reported.add(node.dictionary)
        for ref in node.content or ():
            if ref.id is None:
                continue
            needs = self._without_dictionary.get(ref.id)
            if needs is not None and needs not in reported:
                self._missing_dictionary(needs).add_path(where)
                reported.add(needs)
            loc = self.repo.index.lookup(ref.id)
            if loc is None:
                if "missing" not in reported:
                    result.problems.append(Problem("missing-blob", f"{where}: chunk {ref.id.hex()} is in no index"))
                    reported.add("missing")
                continue
            pack_id = bad_blobs.get(ref.id) or (loc.pack_id if loc.pack_id in pack_problems else None)
            if pack_id is not None and pack_id not in reported:
                pack_problems[pack_id].add_path(where)
                reported.add(pack_id)

    def _missing_dictionary(self, dictionary_id: bytes) -> Problem:
        """The one problem reported for a missing dictionary, naming every file that needs it."""
        problem = self._missing_dictionaries.get(dictionary_id)
        if problem is None:
            problem = self._missing_dictionaries[dictionary_id] = Problem(
                "missing-dictionary", f"compression dictionary {dictionary_id.hex()} is missing")
        return problem

    async def _snapshot_ids(self):
        async for key in self.repo.store.list(SNAPSHOTS_PREFIX):
            yield key.rsplit("/", 1)[-1]
