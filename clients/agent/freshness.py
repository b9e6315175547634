"""Trusting only index entries whose pack still exists.

The backup service's garbage collection deletes packs that no kept backup references and
deletes an index file only once all the packs it describes are gone, so for a while
index files name packs that no longer exist (the agent can never delete anything, and
the service cannot read the encrypted index). The rule (docs/format.md, after garbage
collection): list `data/` when opening the repository and take no index entries for
packs that are not there. Then

- a backup never deduplicates against data that is gone (its commit would be refused):
  what those entries held is read and uploaded again;
- a blob stored in a deleted pack and again in a newer one is found where it still is,
  which a restore needs;
- check reports only real damage: a kept snapshot whose data is missing.

Listing costs one request per 1000 packs (~32 GiB of repository).
"""

from __future__ import annotations

from shared.format import Repository
from shared.format.index import Index, IndexedPack


class _PresentPacksIndex(Index):
    """While `present` is set, takes no entries of other packs (and counts them)."""

    def __init__(self, present: set[str]) -> None:
        super().__init__()
        self.present: set[str] | None = present
        self.skipped: set[str] = set()

    def add_pack(self, pack: IndexedPack) -> None:
        if self.present is None or pack.id in self.present:
            super().add_pack(pack)
        else:
            self.skipped.add(pack.id)


async def filter_gone_packs(repo: Repository) -> _PresentPacksIndex:
    """Give a repository opened with load_index=False an empty index that, until its
    `present` is set to None, takes no entries of packs missing from the store. The
    caller loads it (repo.load_index, or the checker does); `skipped` then says which
    indexed packs were gone."""
    repo.index = index = _PresentPacksIndex(set(await repo.list_packs()))
    return index


async def load_present_index(repo: Repository) -> set[str]:
    """Load the index without entries of packs that are gone; returns the ids left out."""
    index = await filter_gone_packs(repo)
    await repo.load_index()
    index.present = None  # packs stored from now on are indexed as usual
    return index.skipped
