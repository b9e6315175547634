"""Where the repository lives, and opening it.

- The server (the usual case): the repository is this host's prefix of the ReClo bucket,
  reached through the backup service with the agent key (remote_store.RemoteStore).
- A folder (`repository = "file:///mnt/usb/reclo"`, or `--repo`): a USB disk or a NAS
  mount, written directly (shared.format.LocalFolderStore); no server is involved.

Both get the same wrappers around the object store port, innermost first: the bandwidth
limit, retries of what a flaky network breaks, and index files that name their packs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shared.format import LocalFolderStore, ObjectStore, RepositoryNotFound
from shared.format.indexcache import IndexCache, ReadOnlyIndexCache

from .config import AgentConfig, repository_folder
from .exits import ConfigError, UsageError


class NoRepository(UsageError):
    """The store holds no repository (yet)."""
from .packrefs import DeclaringStore, RecordingRepository
from .throttle import PacedSession, ThrottledStore, TokenBucket

if TYPE_CHECKING:
    from .remote_store import RemoteStore


@dataclass
class Target:
    description: str  # for messages: the server URL or the folder
    store: ObjectStore  # what the repository reads and writes through
    remote: RemoteStore | None = None  # the server's store, for the backup session
    folder: Path | None = None
    gone_packs: set[str] = field(default_factory=set)  # indexed, but deleted by retention
    _closers: list = field(default_factory=list)

    @property
    def is_server(self) -> bool:
        return self.remote is not None

    async def __aenter__(self) -> Target:
        return self

    async def __aexit__(self, *exc) -> None:
        for close in reversed(self._closers):
            await close()

    async def open_repository(self, passphrase: str, *, upload_concurrency: int = 2,
                              load_index: bool = True, index_cache_in: Path | None = None,
                              index_at: Path | None = None) -> RecordingRepository:
        """Open it; with load_index, the index without entries of packs that are gone
        (retention's garbage collection; the format leaves them out, docs/format.md §12).
        ``index_cache_in``: a folder keeping the index files read, per repository, and the
        index itself on disk (not for `check`, which must read the repository's own).
        ``index_at``: the index on disk in this file instead, for this run only; with
        ``index_cache_in`` too, the kept index files are only read, never written."""
        try:
            repo = await RecordingRepository.open(self.store, passphrase, load_index=False,
                                                  uploads_in_flight=upload_concurrency)
        except RepositoryNotFound:
            raise NoRepository(f"there is no repository at {self.description} yet: "
                               "run `reclo-agent init`, then a first backup") from None
        if index_at is not None:
            if index_cache_in is not None:
                repo.index_cache = ReadOnlyIndexCache(index_cache_in / repo.config.id)
            repo.keep_index_in(index_at)
        elif index_cache_in is not None:
            repo.use_index_cache(IndexCache(index_cache_in / repo.config.id))
        if load_index:
            try:
                await repo.load_index()
            except BaseException:
                repo.close()
                raise
            self.gone_packs = repo.gone_packs
        return repo


def open_target(cfg: AgentConfig, agent_key: str | None, *, repository: str | None = None) -> Target:
    """The configured repository; `repository` (a file:// URL) overrides the config."""
    url = repository or cfg.repository
    bucket = TokenBucket(cfg.upload.bandwidth_limit) if cfg.upload.bandwidth_limit else None
    if url:
        folder = repository_folder(url)
        inner: ObjectStore = LocalFolderStore(folder)
        if bucket is not None:
            inner = ThrottledStore(inner, bucket)
        return Target(str(folder), inner, folder=folder)
    if not cfg.server:
        raise ConfigError(f"no server in {cfg.path}: run `reclo-agent register --server URL --username NAME` "
                          "(or set repository = \"file:///...\" for a local folder)")
    if not agent_key:
        raise ConfigError("this agent has no agent key yet: run `reclo-agent register` first")
    import aiohttp  # the folder mode does without the HTTP client

    from .remote_store import TRANSFER_TIMEOUT, RemoteStore
    from .retrying import RetryingStore

    http = aiohttp.ClientSession(timeout=TRANSFER_TIMEOUT)
    session = PacedSession(http, bucket) if bucket is not None else http
    remote = RemoteStore(cfg.server, agent_key, http=session)  # type: ignore[arg-type]
    target = Target(cfg.server, DeclaringStore(RetryingStore(remote)), remote=remote)
    target._closers.append(http.close)
    return target
