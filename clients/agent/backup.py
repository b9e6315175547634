"""One backup, from the pre commands to the commit: what `backup` and `run` both do.

1. Open the repository and decide full or incremental: full when asked, when the
   schedule says so, or when this host's last full of the same sources is a week old;
   otherwise incremental against the newest snapshot of this host and sources.
2. Open a backup session on the server (`POST /api/v1/backups`); remember it in the
   state file until it is closed, so a run that is killed is closed by the next one.
3. Run the pre commands; one that fails fails the backup with its output.
4. Back up (shared.format.Archiver; the index left out entries of packs the service
   deleted, docs/format.md §12): packs, their index files, then the snapshot. A new
   repository on the server is created here, inside this first session.
5. Commit with the snapshot id, the packs it references and its stats, or report the
   failure (`POST .../fail`) with the reason. Post commands run in either case.

Resume: a killed backup leaves packs and index files but no snapshot; the next one
indexes even the packs whose index file was lost and uploads none of them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Sequence

from shared.format import FULL, INCREMENTAL, Archiver, Snapshot, Source
from shared.format.archiver import warm_up
from shared.format.indexcache import IndexCache
from shared.format.treecache import TreeCache

from . import hooks, version
from .config import IMAGE, AgentConfig, SourceConfig
from .exits import AgentError, UsageError
from .packrefs import PackReferences, RecordingRepository
from .progress import Reporter
from .schedule import kind_for
from .state import StateFile
from .target import NoRepository, Target

if TYPE_CHECKING:
    from shared.api.backup import SnapshotStats

# Closing a session after a failure must not hang the agent when the network is gone.
FAIL_REPORT_TIMEOUT = 30.0


@dataclass
class BackupOutcome:
    snapshot_id: str
    snapshot: Snapshot
    warnings: list[str]
    backup_id: str | None = None
    packs: int = 0
    dropped_packs: int = 0

    def summary(self) -> dict:
        s = self.snapshot.stats
        return {
            "snapshot": self.snapshot_id,
            "backup_id": self.backup_id,
            "kind": self.snapshot.kind,
            "parent": self.snapshot.parent,
            "host": self.snapshot.host,
            "time": self.snapshot.time.isoformat(),
            "sources": [src.path for src in self.snapshot.sources],
            "files": s.files,
            "dirs": s.dirs,
            "images": s.images,
            "bytes": s.bytes,
            "bytes_read": s.bytes_read,
            "new_bytes": s.new_bytes,
            "stored_bytes": s.stored_bytes,
            "hole_bytes": s.hole_bytes,
            "duration_seconds": s.duration_s,
            "packs_referenced": self.packs,  # server only: what the commit told the service to keep
            "packs_deleted_by_retention": self.dropped_packs,  # index entries left out (docs/format.md §12)
            "warnings": self.warnings,
        }


@dataclass
class BackupRequest:
    sources: Sequence[SourceConfig]
    force_full: bool = False
    kind: str | None = None  # decided by the schedule; None: decide from the repository
    tags: Sequence[str] = field(default_factory=tuple)


def recorded_path(cfg: AgentConfig, source: SourceConfig) -> str:
    """The path the snapshot records for a source (on Windows, the shadow copy's link)."""
    if sys.platform == "win32" and cfg.use_vss and source.kind != IMAGE:
        from .windows import vss

        return vss.link_path(cfg.state_dir, source.path)
    return os.path.abspath(source.path)


async def take_backup(cfg: AgentConfig, target: Target, passphrase: str, request: BackupRequest,
                      reporter: Reporter) -> BackupOutcome:
    with contextlib.ExitStack() as held:  # this run's session lock, released when it ends
        return await _take_backup(cfg, target, passphrase, request, reporter, held)


async def _take_backup(cfg: AgentConfig, target: Target, passphrase: str, request: BackupRequest,
                       reporter: Reporter, held: contextlib.ExitStack) -> BackupOutcome:
    if not request.sources:
        raise UsageError(f"nothing to back up: give --source/--image or add [[sources]] to {cfg.path}")
    paths = [(recorded_path(cfg, s), s.kind) for s in request.sources]
    repo: RecordingRepository | None
    warmed = _warm_up_while_the_key_is_derived(cfg, request.sources)
    try:
        repo = await target.open_repository(passphrase, upload_concurrency=cfg.upload.concurrency,
                                            index_cache_in=cfg.state_dir / "index-cache")
    except NoRepository:
        if not target.is_server:
            raise
        repo = None  # the first backup of this host creates the repository (step 4)
    finally:
        warmed.set()
    if repo is not None and repo.index_in_memory_because:
        reporter.status(f"the index is kept in memory for this backup: {repo.index_in_memory_because}")
    state = StateFile(cfg.state_dir)
    backup_id = None
    try:
        kind, parent = await _kind_and_parent(repo, cfg.host, paths, request)
        if target.remote is not None:
            from pydantic import ValidationError

            from shared.api.backup import BackupStart, SourceSpec

            from .remote_store import ApiError

            # The id is claimed and noted before the server is asked, so that a run killed
            # before the answer comes back leaves its session to the next run to close.
            try:
                start = BackupStart(id=secrets.token_hex(16), kind=kind, parent_snapshot_id=parent,
                                    sources=[SourceSpec(path=p, type=k) for p, k in paths],
                                    agent_version=version())
            except ValidationError as e:  # what the server would refuse, said before asking
                raise UsageError("the server does not take this backup: " + "; ".join(
                    f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in e.errors())) from None
            held.enter_context(state.hold_session(start.id))
            state.note_session(start.id)
            try:
                backup_id = (await target.remote.start_backup(start)).id
            except ApiError as e:
                if 400 <= e.status < 500 and e.status not in (408, 429):
                    state.forget_sessions([start.id])  # refused: no session was opened
                raise  # otherwise it may have been opened: the next run finds out
            if backup_id != start.id:  # a server that picks ids itself
                held.enter_context(state.hold_session(backup_id))
                state.note_session(backup_id)
                state.forget_sessions([start.id])
            reporter.status(f"backup session {backup_id} opened ({kind})")
    except BaseException:
        if repo is not None:
            repo.close()  # the index on disk, and its lock, for the next run
        raise

    succeeded_pre: list[SourceConfig] = []
    tree_cache: TreeCache | None = None
    warnings: list[str] = []
    ok = False
    try:
        for source in request.sources:
            if source.pre is not None:
                reporter.status(f"running pre command of {source.path}: {hooks.describe(source.pre)}")
                await hooks.run_pre(source.pre, timeout=cfg.hook_timeout.total_seconds())
            succeeded_pre.append(source)
        if repo is None:
            reporter.status(f"creating the repository at {target.description}")
            repo = await RecordingRepository.init(target.store, passphrase, uploads_in_flight=cfg.upload.concurrency)
            repo.use_index_cache(IndexCache(cfg.state_dir / "index-cache" / repo.config.id))
        if target.gone_packs:
            reporter.status(f"{len(target.gone_packs)} indexed pack(s) were deleted by retention; "
                            "what they held is stored again if needed")
        # Every target: the server needs the packs for retention, and the tree cache keeps
        # them so the next backup can check that what it keeps unseen is still there.
        references = repo.references = PackReferences(repo)
        tree_cache = TreeCache(tree_cache_path(cfg, repo.config.id, paths))
        archiver = Archiver(repo, host=cfg.host, tags=request.tags, excludes=cfg.excludes,
                            progress=reporter.progress, in_place=cfg.in_place.patterns,
                            in_place_min_size=cfg.in_place.min_size, tree_cache=tree_cache)
        async with _readable(cfg, request.sources) as sources:
            result = await archiver.backup(sources, kind=kind, parent=parent)
        warnings.extend(result.warnings)
        # Folders kept from the tree cache were not looked into: they reference only what
        # the parent did, so the parent's packs stand in for theirs (a superset: retention
        # keeps a little more for a week, never less; docs/agent.md).
        references.note_packs(tree_cache.parent_packs or ())
        packs = references.packs()
        if target.remote is not None:
            from shared.api.backup import BackupCommit

            await target.remote.commit(BackupCommit(
                snapshot_id=result.snapshot_id, packs=packs,
                is_image=any(s.kind == IMAGE for s in result.snapshot.sources),
                stats=_api_stats(result.snapshot, len(warnings))))
        try:
            tree_cache.commit(result.snapshot_id, packs)
        except Exception as e:  # the backup counts; the next one looks at everything
            tree_cache.close()
            warnings.append(f"tree cache not saved: {e}")
        ok = True
    except BaseException as e:
        if tree_cache is not None:
            tree_cache.close()  # the snapshot did not count: the current cache stays
        if target.remote is not None and backup_id is not None:
            await _report_failure(target, state, backup_id, e)
        raise
    finally:
        if repo is not None:
            repo.close()
        warnings.extend(await _post_commands(cfg, succeeded_pre, ok, reporter))
    if backup_id is not None:
        await _close_stale_sessions(target, state, backup_id)
    return BackupOutcome(result.snapshot_id, result.snapshot, warnings, backup_id, len(packs), len(target.gone_packs))


def _warm_up_while_the_key_is_derived(cfg: AgentConfig, sources: Sequence[SourceConfig]) -> threading.Event:
    """Starts archiver.warm_up on the folder sources in a thread; set the event returned
    once the repository is open. Not on Windows, where the backup reads a VSS shadow
    copy made later, not the live folders."""
    stop = threading.Event()
    roots = [os.path.abspath(s.path) for s in sources if s.kind != IMAGE]
    if roots and sys.platform != "win32":
        threading.Thread(target=warm_up, args=(roots, cfg.excludes, stop), name="reclo-warm-up",
                         daemon=True).start()
    return stop


def tree_cache_path(cfg: AgentConfig, repository_id: str, paths: list[tuple[str, str]]):
    """One tree cache per repository and set of sources (each set has its own parents)."""
    sources = hashlib.sha256(repr((cfg.host, sorted(paths))).encode()).hexdigest()[:16]
    return cfg.state_dir / "tree-cache" / f"{repository_id}-{sources}.sqlite"


async def _kind_and_parent(repo: RecordingRepository | None, host: str, paths: list[tuple[str, str]],
                           request: BackupRequest) -> tuple[str, str | None]:
    if repo is None:
        return FULL, None
    wanted = sorted(paths)
    mine = [(sid, snap) for sid, snap in await repo.list_snapshots()
            if snap.host == host and sorted((s.path, s.kind) for s in snap.sources) == wanted]
    if not mine:
        return FULL, None
    fulls = [snap.time for _, snap in mine if snap.kind == FULL]
    kind = request.kind or kind_for(datetime.now(timezone.utc), max(fulls) if fulls else None, request.force_full)
    return kind, (mine[-1][0] if kind == INCREMENTAL else None)


def _api_stats(snapshot: Snapshot, warnings: int) -> SnapshotStats:
    from shared.api.backup import SnapshotStats

    s = snapshot.stats
    return SnapshotStats(files=s.files + s.images, dirs=s.dirs, bytes=s.bytes, new_bytes=s.stored_bytes,
                         chunks=s.chunks, new_chunks=s.new_chunks, duration_seconds=s.duration_s,
                         warnings=warnings)


@contextlib.asynccontextmanager
async def _readable(cfg: AgentConfig, sources: Sequence[SourceConfig]):
    """The sources as the archiver should read them: on Windows, folders from a VSS
    shadow copy (consistent open files); elsewhere as they are."""
    if sys.platform == "win32" and cfg.use_vss and any(s.kind != IMAGE for s in sources):
        from .windows import vss

        with vss.shadowed(sources, cfg.state_dir) as mapped:
            yield mapped
        return
    yield [Source(s.path, s.kind) for s in sources]


async def _post_commands(cfg: AgentConfig, sources: list[SourceConfig], ok: bool, reporter: Reporter) -> list[str]:
    warnings = []
    status = "ok" if ok else "failed"
    for source in sources:
        if source.post is None:
            continue
        reporter.status(f"running post command of {source.path}: {hooks.describe(source.post)}")
        try:
            result = await hooks.run(source.post, timeout=cfg.hook_timeout.total_seconds(),
                                     env={"RECLO_BACKUP_STATUS": status})
        except AgentError as e:
            warnings.append(f"post command of {source.path}: {e}")
            continue
        if result.returncode != 0:
            warnings.append(f"post command {result.command!r} failed with exit code {result.returncode}: "
                            f"{result.output.strip()[-500:]}")
    for w in warnings:
        reporter.warning(w)
    return warnings


def _reason(error: BaseException) -> str:
    if isinstance(error, (asyncio.CancelledError, KeyboardInterrupt)):
        return "interrupted: the agent was stopped during the backup"
    return f"{error.__class__.__name__}: {error}" if not isinstance(error, AgentError) else str(error)


async def _report_failure(target: Target, state: StateFile, backup_id: str, error: BaseException) -> None:
    """Tell the server (best effort); if it cannot be told, the next backup does."""
    assert target.remote is not None
    try:
        await asyncio.wait_for(target.remote.fail(_reason(error)), FAIL_REPORT_TIMEOUT)
    except Exception:
        return
    state.forget_sessions([backup_id])


async def _close_stale_sessions(target: Target, state: StateFile, current: str) -> None:
    """Close sessions of killed runs, now that this backup has committed what it reused
    of their uploads (until then they keep the service from collecting those packs)."""
    assert target.remote is not None
    done = [current]
    for backup_id in state.load().open_sessions:
        if backup_id == current or state.session_is_live(backup_id):
            continue  # a run still going (a manual backup beside the daemon's) closes its own
        try:
            await asyncio.wait_for(
                target.remote.api("POST", f"/api/v1/backups/{backup_id}/fail",
                                  body={"reason": "did not finish (the agent was stopped or lost the "
                                                  f"server); resumed by backup {current}"}),
                FAIL_REPORT_TIMEOUT)
        except Exception as e:
            if getattr(e, "status", None) in (404, 409):  # never opened, or already closed
                done.append(backup_id)
        else:
            done.append(backup_id)
    state.forget_sessions(done)
