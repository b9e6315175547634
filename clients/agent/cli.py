"""The `reclo-agent` command (docs/agent.md is its manual).

    reclo-agent register --server URL --username NAME [--host NAME]
    reclo-agent init
    reclo-agent backup [--full] [--source PATH]... [--image PATH]... [--exclude GLOB]...
    reclo-agent run
    reclo-agent snapshots [--json]
    reclo-agent restore SNAPSHOT TARGET [--path P]
    reclo-agent check [--read-data | --read-data-subset N%]
    reclo-agent forget [--keep-last N] [--keep-daily N] [--keep-weekly N] [--keep-monthly N]

Options of every command: --config PATH (or RECLO_AGENT_CONFIG), --repo file:///FOLDER
(a folder repository instead of the configured one), --json (JSON lines on stdout).
Every failure ends as one line on stderr (or a JSON `error` line) and an exit code from
exits.py, so scripts and monitoring can tell "try later" from "fix the configuration".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import signal
import socket
import sys
from pathlib import Path

from shared.format import Checker, Repository, RepositoryExists, Restorer

from . import config as configuration, exits, restore_index, secretfile, version
from .backup import BackupRequest, take_backup
from .config import FOLDER, IMAGE, AgentConfig, SourceConfig
from .exits import AgentError, ConfigError, UsageError
from .progress import Reporter, human_bytes, reporter_for
from .target import NoRepository, open_target

# Modules that only some commands need (aiohttp, pydantic models, rich) are imported by
# those commands: a folder backup started by cron should not pay for the HTTP client.

# A passphrase guards every byte of every backup and cannot be reset: refuse trivial ones.
MIN_PASSPHRASE = 8


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors exit with USAGE, as documented
        self.print_usage(sys.stderr)
        self.exit(exits.USAGE, f"{self.prog}: error: {message}\n")


class _Version(argparse.Action):
    """--version, with the version looked up only when asked for."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"reclo-agent {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help="the TOML configuration (default: RECLO_AGENT_CONFIG, else the system's)")
    common.add_argument("--repo", default=argparse.SUPPRESS, metavar="URL",
                        help="use the folder repository at file:///PATH instead of the configured one")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="JSON lines on stdout (progress, warnings, result)")

    parser = _Parser(prog="reclo-agent", description="ReClo Backup Manager", parents=[common])
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    p = commands.add_parser("register", parents=[common], help="mint an agent key for this host")
    p.add_argument("--server", required=True, help="the ReClo server, e.g. https://backup.example.com")
    p.add_argument("--username", required=True)
    p.add_argument("--host", help="the name of this server in ReClo (default: its hostname)")

    commands.add_parser("init", parents=[common], help="set the passphrase and create the repository")

    p = commands.add_parser("backup", parents=[common], help="back up now")
    p.add_argument("--full", action="store_true", help="read every file again (default: incremental)")
    p.add_argument("--source", action="append", default=[], metavar="PATH", help="a folder to back up")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="a disk image file or block device to back up")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="skip matching entries")

    commands.add_parser("run", parents=[common], help="stay running and keep the schedule")
    commands.add_parser("snapshots", parents=[common], help="list the snapshots")

    p = commands.add_parser("restore", parents=[common], help="restore a snapshot into a folder")
    p.add_argument("snapshot", help="a snapshot id (or a unique prefix of one), or 'latest'")
    p.add_argument("target", type=Path, help="the folder to restore into")
    p.add_argument("--path", help="restore only this entry, e.g. data/reports/2024")

    p = commands.add_parser("check", parents=[common], help="check the repository")
    depth = p.add_mutually_exclusive_group()
    depth.add_argument("--read-data", action="store_true", help="download and verify every pack")
    depth.add_argument("--read-data-subset", metavar="N%", help="download and verify N%% of the packs")

    p = commands.add_parser("forget", parents=[common], help="ask the server to drop old backups")
    for name in ("last", "daily", "weekly", "monthly"):
        p.add_argument(f"--keep-{name}", type=int, default=0, metavar="N")

    commands.add_parser("service-host", parents=[common])  # the Windows service's entry point, unlisted
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    json_lines = getattr(args, "json", False)
    reporter = reporter_for(json_lines)
    try:
        cfg = configuration.load(getattr(args, "config", None))
        handler = COMMANDS[args.command]
        if args.command == "service-host":
            return handler(cfg, args, reporter)
        with reporter:
            return _run_async(handler(cfg, args, reporter))
    except BaseException as e:  # every ending gets its documented code
        if isinstance(e, SystemExit):
            raise
        code, message = exits.code_for(e)
        reporter.error(message, code)
        return code


def _run_async(coro) -> int:
    """Run a command; SIGTERM cancels it like Ctrl-C (a backup reports itself interrupted)."""

    async def wrapped():
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows has no add_signal_handler
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        return await coro

    return asyncio.run(wrapped())


# --- credentials --------------------------------------------------------------------------------


def _secrets(cfg: AgentConfig) -> secretfile.Secrets:
    return secretfile.read(cfg.secrets_path)


def _passphrase(cfg: AgentConfig) -> str:
    """RECLO_PASSPHRASE, else the secrets file, else a prompt on a terminal."""
    value = os.environ.get("RECLO_PASSPHRASE") or _secrets(cfg).passphrase
    if value:
        return value
    if sys.stdin.isatty():
        return getpass.getpass("Repository passphrase: ")
    raise ConfigError(f"no passphrase: run `reclo-agent init`, or set RECLO_PASSPHRASE (secrets: {cfg.secrets_path})")


def _new_passphrase() -> str:
    value = os.environ.get("RECLO_PASSPHRASE")
    if value is None:
        if not sys.stdin.isatty():
            raise UsageError("set RECLO_PASSPHRASE, or run init on a terminal to type the passphrase")
        value = getpass.getpass("New repository passphrase: ")
        if getpass.getpass("The same passphrase again: ") != value:
            raise UsageError("the two passphrases differ; nothing was changed")
    if len(value) < MIN_PASSPHRASE:
        raise UsageError(f"the passphrase must have at least {MIN_PASSPHRASE} characters")
    return value


def _repo_url(args) -> str | None:
    return getattr(args, "repo", None)


def _target(cfg: AgentConfig, args):
    return open_target(cfg, _secrets(cfg).agent_key if not (_repo_url(args) or cfg.repository) else None,
                       repository=_repo_url(args))


# --- commands -----------------------------------------------------------------------------------


async def cmd_register(cfg: AgentConfig, args, reporter: Reporter) -> int:
    password = os.environ.get("RECLO_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise UsageError("set RECLO_PASSWORD, or run register on a terminal to type the password")
        password = getpass.getpass(f"Password of {args.username} on {args.server}: ")
    from .server import Server

    host = args.host or (cfg.host if cfg.exists else socket.gethostname())
    server_url = args.server.rstrip("/")
    async with Server(server_url) as server:
        session = await server.login(args.username, password)
        server.token = session.token
        try:
            minted = await server.mint_agent_key(host)
        finally:
            with contextlib.suppress(AgentError):
                await server.logout()  # the agent keeps only its own key
        server.token = minted.key
        me = await server.me()
    if me.kind != "agent" or me.host != host:
        raise AgentError(f"the server gave a key for {me.kind} {me.host!r}, not for the agent of {host!r}")
    configuration.set_top_level(cfg.path, {"server": server_url, "host": host})
    secretfile.update(cfg.secrets_path, agent_key=minted.key)
    reporter.result({"server": server_url, "host": host, "agent_key_id": minted.id, "config": str(cfg.path),
                     "secrets": str(cfg.secrets_path)},
                    f"registered {host!r} with {server_url} as {args.username}; agent key stored in {cfg.secrets_path}")
    return exits.OK


async def cmd_init(cfg: AgentConfig, args, reporter: Reporter) -> int:
    passphrase = _new_passphrase()
    async with _target(cfg, args) as target:
        created = False
        if target.is_server:
            await target.remote.api("GET", "/api/v1/auth/me")  # the key works before we promise anything
            try:
                await target.open_repository(passphrase, load_index=False)  # WrongPassphrase if not ours
                message = f"the repository at {target.description} opens with this passphrase"
            except NoRepository:
                # The service takes new objects only inside a backup session.
                message = f"the repository at {target.description} will be created by the first backup"
        else:
            try:
                await Repository.init(target.store, passphrase)
                created, message = True, f"created the repository at {target.description}"
            except RepositoryExists:
                await target.open_repository(passphrase, load_index=False)
                message = f"the repository at {target.description} opens with this passphrase"
    secretfile.update(cfg.secrets_path, passphrase=passphrase)
    message += f"; passphrase stored in {cfg.secrets_path}"
    reporter.result({"repository": target.description, "created": created, "secrets": str(cfg.secrets_path)},
                    message)
    return exits.OK


def _sources_from(cfg: AgentConfig, args) -> list[SourceConfig]:
    given = [SourceConfig(p, FOLDER) for p in args.source] + [SourceConfig(p, IMAGE) for p in args.image]
    return given or list(cfg.sources)


async def cmd_backup(cfg: AgentConfig, args, reporter: Reporter) -> int:
    if args.exclude:
        cfg = _replace(cfg, excludes=(*cfg.excludes, *args.exclude))
    request = BackupRequest(_sources_from(cfg, args), force_full=args.full)
    passphrase = _passphrase(cfg)
    async with _target(cfg, args) as target:
        outcome = await take_backup(cfg, target, passphrase, request, reporter)
    for warning in outcome.warnings:
        reporter.warning(warning)
    s = outcome.snapshot.stats
    parent = f" of {outcome.snapshot.parent[:8]}" if outcome.snapshot.parent else ""
    text = (f"snapshot {outcome.snapshot_id[:8]} saved ({outcome.snapshot.kind}{parent}): "
            f"{s.files} files, {s.images} images, {human_bytes(s.bytes)}; read {human_bytes(s.bytes_read)}, "
            f"uploaded {human_bytes(s.stored_bytes)} in {s.duration_s:.1f} s"
            + (f"; {len(outcome.warnings)} warning(s)" if outcome.warnings else ""))
    reporter.result(outcome.summary(), text)
    return exits.WARNINGS if outcome.warnings else exits.OK


def _replace(cfg: AgentConfig, **changes) -> AgentConfig:
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def cmd_service_host(cfg: AgentConfig, args, reporter: Reporter) -> int:
    from .windows import service

    if cfg.log_file is None:  # a service has no console: log next to the configuration
        cfg = _replace(cfg, log_file=cfg.path.parent / "logs" / "agent.log")
    return service.host(lambda stop: _daemon(cfg, args, stop))


async def cmd_run(cfg: AgentConfig, args, reporter: Reporter) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return await _daemon(cfg, args, stop)


async def _daemon(cfg: AgentConfig, args, stop: asyncio.Event) -> int:
    from .daemon import Daemon
    from .jsonlog import JsonLog

    if not cfg.sources:
        raise UsageError(f"no [[sources]] in {cfg.path}: `run` backs up what the configuration lists")
    passphrase = _passphrase(cfg)
    log = JsonLog(path=cfg.log_file)
    try:
        return await Daemon(cfg, _secrets(cfg).agent_key, passphrase, log, repository=_repo_url(args)).run(stop)
    finally:
        log.close()


async def cmd_snapshots(cfg: AgentConfig, args, reporter: Reporter) -> int:
    async with _target(cfg, args) as target:
        repo = await target.open_repository(_passphrase(cfg), load_index=False)
        snapshots = await repo.list_snapshots()
    docs = [{"id": sid, "time": snap.time.isoformat(), "host": snap.host, "kind": snap.kind, "parent": snap.parent,
             "sources": [{"name": s.name, "path": s.path, "kind": s.kind} for s in snap.sources],
             "tags": snap.tags, "files": snap.stats.files, "images": snap.stats.images, "bytes": snap.stats.bytes,
             "stored_bytes": snap.stats.stored_bytes, "warnings": snap.stats.warnings}
            for sid, snap in snapshots]
    if getattr(args, "json", False):
        print(json.dumps(docs, indent=1), flush=True)
        return exits.OK
    lines = [f"{'ID':<10}{'TIME (UTC)':<21}{'HOST':<18}{'KIND':<13}{'SIZE':>11}  SOURCES"]
    for d in docs:
        lines.append(f"{d['id'][:8]:<10}{d['time'][:19].replace('T', ' '):<21}{d['host'][:17]:<18}{d['kind']:<13}"
                     f"{human_bytes(d['bytes']):>11}  {', '.join(s['path'] for s in d['sources'])}")
    lines.append(f"{len(docs)} snapshot(s)")
    reporter.result({"snapshots": docs}, "\n".join(lines))
    return exits.OK


async def cmd_restore(cfg: AgentConfig, args, reporter: Reporter) -> int:
    # The index on disk, so that a restore's memory does not grow with the repository;
    # its own, not the backups' (restore_index.py).
    index_at = await asyncio.to_thread(restore_index.make, cfg.state_dir)
    try:
        return await _restore(cfg, args, reporter, index_at)
    finally:
        await asyncio.to_thread(restore_index.remove, index_at)


async def _restore(cfg: AgentConfig, args, reporter: Reporter, index_at: Path | None) -> int:
    async with _target(cfg, args) as target:
        # The index files the backups kept are read, not written (restore_index.py).
        repo = await target.open_repository(_passphrase(cfg), index_at=index_at,
                                            index_cache_in=cfg.state_dir / "index-cache")
        try:
            if index_at is None or repo.index_in_memory_because:
                reporter.status("the index is kept in memory for this restore: "
                                f"{repo.index_in_memory_because or f'{cfg.state_dir} cannot be written'}")
            snapshot_id = await repo.find_snapshot(args.snapshot)
            reporter.status(f"restoring {snapshot_id[:8]}{' ' + args.path if args.path else ''} into {args.target}")
            reporter.activity = "restore"
            result = await Restorer(repo, progress=reporter.progress).restore(snapshot_id, args.target,
                                                                              path=args.path)
        finally:
            repo.close()  # the index on disk, before its folder goes
    reporter.result({"snapshot": snapshot_id, "target": str(args.target), "files": result.files, "dirs": result.dirs,
                     "symlinks": result.symlinks, "bytes": result.bytes},
                    f"restored {snapshot_id[:8]} into {args.target}: {result.files} files, {result.dirs} folders, "
                    f"{result.symlinks} symlinks, {human_bytes(result.bytes)}")
    return exits.OK


async def cmd_check(cfg: AgentConfig, args, reporter: Reporter) -> int:
    subset = None
    if args.read_data_subset:
        try:
            subset = float(args.read_data_subset.rstrip("%"))
        except ValueError:
            subset = -1.0
        if not 0 < subset <= 100:
            raise UsageError("--read-data-subset takes a percentage such as 10%")
    async with _target(cfg, args) as target:
        repo = await target.open_repository(_passphrase(cfg), load_index=False)
        reporter.status("checking the repository" + (" and reading its data" if args.read_data or subset else ""))
        result = await Checker(repo).check(read_data=args.read_data, subset_percent=subset)
    for w in result.warnings:
        reporter.warning(str(w))
    doc = {"ok": result.ok, "snapshots": result.snapshots, "packs": result.packs, "packs_read": result.packs_read,
           "blobs_verified": result.blobs_verified,
           "problems": [{"kind": p.kind, "message": p.message, "pack": p.pack_id, "paths": p.paths,
                         "affected": p.affected} for p in result.problems],
           "warnings": [str(w) for w in result.warnings], "packs_deleted_by_retention": len(repo.gone_packs)}
    text = (f"{result.snapshots} snapshots, {result.packs} packs, {result.packs_read} read, "
            f"{result.blobs_verified} blobs verified: ")
    if result.ok:
        reporter.result(doc, text + "no problems")
        return exits.OK
    reporter.result(doc, text + f"{len(result.problems)} problem(s):\n" + "\n".join(f"  {p}" for p in result.problems))
    return exits.DAMAGED


async def cmd_forget(cfg: AgentConfig, args, reporter: Reporter) -> int:
    from shared.api.backup import RetentionPolicy

    from .server import Server

    policy = RetentionPolicy(keep_last=args.keep_last, keep_daily=args.keep_daily, keep_weekly=args.keep_weekly,
                             keep_monthly=args.keep_monthly)
    if not any((policy.keep_last, policy.keep_daily, policy.keep_weekly, policy.keep_monthly)):
        raise UsageError("say what to keep: --keep-last/--keep-daily/--keep-weekly/--keep-monthly")
    if _repo_url(args) or cfg.repository:
        raise UsageError("forget works with the server, which alone may delete: a folder repository keeps "
                         "everything (remove old folders' disks by hand, or let the service manage it)")
    if not cfg.server:
        raise ConfigError(f"no server in {cfg.path}: run `reclo-agent register` first")
    agent_key = _secrets(cfg).agent_key
    if not agent_key:
        raise ConfigError("this agent has no agent key yet: run `reclo-agent register` first")
    async with Server(cfg.server, agent_key) as server:
        result = await server.forget(policy)
    reporter.result({"kept": result.kept, "forgotten": result.forgotten},
                    f"the server keeps {len(result.kept)} backup(s) and forgets {len(result.forgotten)}; "
                    "their unreferenced data is deleted by its garbage collection")
    return exits.OK


COMMANDS = {
    "register": cmd_register,
    "init": cmd_init,
    "backup": cmd_backup,
    "run": cmd_run,
    "snapshots": cmd_snapshots,
    "restore": cmd_restore,
    "check": cmd_check,
    "forget": cmd_forget,
    "service-host": cmd_service_host,
}
