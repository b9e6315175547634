"""Trusting only index entries whose pack still exists.

The backup service's garbage collection deletes packs that no kept backup references, and
may leave index files naming them behind for a while (the agent can never delete
anything, and the service cannot read the encrypted index). A backup that deduplicated
against such an entry would reference data that is gone, and its commit would be refused.
So before a backup the agent lists `data/` (one request per 1000 packs, ~32 GiB) and drops
every index entry whose pack is not there: what they held is read and uploaded again.
"""

from __future__ import annotations

from collections import defaultdict

from shared.format import Repository
from shared.format.index import Index, IndexedPack


async def drop_missing_packs(repo: Repository) -> list[str]:
    """Forget index entries of packs that are not in the store; returns those pack ids."""
    existing = set(await repo.list_packs())
    sizes = repo.index.packs()
    missing = sorted(p for p in sizes if p not in existing)
    if not missing:
        return []
    entries = defaultdict(list)
    for blob_id, loc in repo.index.items():
        if loc.pack_id in existing:
            entries[loc.pack_id].append(loc.entry(blob_id))
    fresh = Index()
    for pack_id, size in sizes.items():
        if pack_id in existing:
            # A pack all of whose blobs are first found elsewhere stays known, with no
            # entries, so that it is not adopted as "unindexed" again.
            fresh.add_pack(IndexedPack(pack_id, size, entries.get(pack_id, [])))
    repo.index = fresh
    return missing
