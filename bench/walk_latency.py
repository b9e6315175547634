"""An incremental backup's walk against a store that answers each read after a delay, as
S3 does (tens of milliseconds per request), instead of a local disk's fraction of one.

    .venv/bin/python bench/walk_latency.py [--size-mb 256] [--latency-ms 0,5,20]
                                           [--runs 2] [--work DIR] [--code CHECKOUT]
                                           [--dataset GENERATED_DIR]

An incremental reads, for every folder whose entries changed, that folder's tree in the
parent snapshot: one read of the store each, so its walk waits for as many round trips
as there are changed folders unless it asks for several at once. This measures exactly
that, with nothing else in the way:

1. `make_dataset.py --size-mb N` (../shared/bench) without its database and disk image
   (reading those is the same work whatever the store), a full backup of it with a tree
   cache into a local folder repository, then one day of changes (`--mutate 1`);
2. for each latency: a copy of the repository and tree cache after the full, then an
   incremental of the changed data whose store waits the latency before each read
   (writes are not delayed), timed in this process. Reported: seconds, reads, and the
   reads' latency added up (what a walk that waits for each read in turn would spend
   waiting).

`--code` runs the archiver of another checkout (a `git worktree` of an older commit) on
the same data, for a before/after comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATASET_TOOL = ROOT.parent / "shared" / "bench" / "make_dataset.py"
PASSPHRASE = "walk-latency-bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=256)
    p.add_argument("--latency-ms", default="0,5,20", help="comma-separated delays per read")
    p.add_argument("--runs", type=int, default=2, help="incrementals per latency")
    p.add_argument("--work", type=Path, help="kept afterwards; default: a temporary folder")
    p.add_argument("--code", type=Path, default=ROOT, help="checkout whose archiver is measured")
    p.add_argument("--dataset-tool", type=Path, default=DATASET_TOOL)
    p.add_argument("--dataset", type=Path, help="copy this generated data set instead of making one")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(args.code.resolve()))
    work = args.work or Path(tempfile.mkdtemp(prefix="reclo-walk-"))
    try:
        # The data stays where it is between runs (a copy would change every file's inode
        # and ctime, so every file would count as changed); each incremental starts from a
        # copy of the repository and the tree cache as the full left them.
        data, prepared, run = work / "data", work / "after-full", work / "run"
        if not (prepared / "done").exists():
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(run, ignore_errors=True)
            asyncio.run(_prepare(data, run, args))
            shutil.rmtree(prepared, ignore_errors=True)
            shutil.copytree(run, prepared, symlinks=True)
            (prepared / "done").touch()
        results = []
        for latency_ms in (float(x) for x in args.latency_ms.split(",")):
            for _ in range(args.runs):
                shutil.rmtree(run, ignore_errors=True)
                shutil.copytree(prepared, run, symlinks=True)
                result = asyncio.run(_incremental(data, run, latency_ms / 1000))
                results.append(result)
                print(json.dumps(result), flush=True)
        return 0
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


async def _prepare(data: Path, run: Path, args: argparse.Namespace) -> None:
    from shared.format import FULL, Archiver
    from shared.format.repository import Repository
    from shared.format.store import LocalFolderStore
    from shared.format.treecache import TreeCache

    if args.dataset:
        shutil.copytree(args.dataset, data, symlinks=True)
    else:
        _run([sys.executable, str(args.dataset_tool), str(data), "--size-mb", str(args.size_mb)])
    for big in ("db", "vm"):  # read alike whatever the store: not what this measures
        shutil.rmtree(data / big, ignore_errors=True)
    repo = await Repository.init(LocalFolderStore(run / "repo"), PASSPHRASE)
    cache = TreeCache(run / "tree-cache.sqlite")
    full = await Archiver(repo, tree_cache=cache).backup([str(data)], kind=FULL)
    cache.commit(full.snapshot_id, [])  # every pack stays indexed in this repository
    repo.close()
    _run([sys.executable, str(args.dataset_tool), str(data), "--mutate", "1"])


async def _incremental(data: Path, run: Path, latency: float) -> dict:
    from shared.format import INCREMENTAL, Archiver
    from shared.format.repository import Repository
    from shared.format.store import LocalFolderStore
    from shared.format.treecache import TreeCache

    store = _delayed_reads(LocalFolderStore(run / "repo"), latency)
    repo = await Repository.open(store, PASSPHRASE)
    cache = TreeCache(run / "tree-cache.sqlite")
    started = time.perf_counter()
    result = await Archiver(repo, tree_cache=cache).backup([str(data)], kind=INCREMENTAL)
    seconds = time.perf_counter() - started
    cache.close()
    repo.close()
    if result.snapshot.parent is None:
        raise SystemExit("the incremental found no parent: the measurement would be a full")
    return {"latency_ms": latency * 1000, "seconds": round(seconds, 3), "reads": store.reads,
            "reads_latency_sum_s": round(store.reads * latency, 3), "files": result.stats.files,
            "bytes_read": result.stats.bytes_read, "code": str(Path(sys.path[0]))}


def _delayed_reads(inner, latency: float):
    """inner, with each read answered after latency seconds; counts the reads. (The class
    is made here, once shared is importable from the checkout --code names.)"""
    from shared.format.store import ForwardingStore

    class DelayedReads(ForwardingStore):
        def __init__(self) -> None:
            super().__init__(inner)
            self.reads = 0

        async def get(self, key, offset=None, length=None):
            self.reads += 1
            await asyncio.sleep(latency)
            return await self.inner.get(key, offset, length)

    return DelayedReads()


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
