"""``reclo-recover``: the Recovery Manager's command line (docs/recovery-manager.md).

  login --server URL --username NAME     sign in (password from RECLO_PASSWORD or a prompt)
  logout                                 end the session
  backups [--host H] [--json]            the backups you can recover
  recoveries [--json]                    recoveries you started
  start BACKUP --target local|aws [--format raw|vhd|vmdk] [--instance-type T]
        [--ask-passphrase] [--wait] [--json]
  status RECOVERY [--json]               state and progress
  cancel RECOVERY                        stop one that is not finished
  instances [--json]                     recovered machines
  instance start|stop|terminate ID [--yes]
  vpn config INSTANCE [-o FILE]          a WireGuard .conf with a key made here
  vpn up|down INSTANCE                   bring the tunnel up or down
  download RECOVERY DEST                 a local recovery's disk image (resumable)
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from clients.recovery import config, exits, vpn
from clients.recovery.client import Api, seg
from clients.recovery.download import download
from clients.recovery.exits import NotSignedIn, RecoverError, UsageError
from clients.recovery.follow import FINAL_STATES, follow
from clients.recovery.progress import STATE_WORDS, Bars, JsonLines, json_line

PASSWORD_ENV = "RECLO_PASSWORD"
PASSPHRASE_ENV = "RECLO_PASSPHRASE"

# Lines are not wrapped for a pipe: ids must come out whole for the next command.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    value, units = float(n), ["B", "KiB", "MiB", "GiB", "TiB"]
    for unit in units:
        if value < 1024 or unit == units[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def _when(text: str | None) -> str:
    return (text or "—").replace("T", " ")[:16]


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        # Server text shown as text: never as rich markup.
        table.add_row(*[_plain(cell) for cell in row])
    return table


def _plain(value: Any) -> Text:
    return Text("" if value is None else str(value))


async def _api() -> Api:
    session = config.load()
    return Api(session.server, session.token)


# --- commands --------------------------------------------------------------------------

def ask_password(args) -> None:
    args.password = os.environ.get(PASSWORD_ENV)
    if args.password is None:
        if not sys.stdin.isatty():
            raise UsageError(f"no password: set {PASSWORD_ENV} or run this in a terminal")
        args.password = getpass.getpass(f"Password for {args.username}: ")


async def cmd_login(args) -> int:
    password = args.password
    async with Api(args.server) as api:
        try:
            answer = await api.call("POST", "/auth/login",
                                    json_body={"username": args.username, "password": password})
        except NotSignedIn as exc:
            raise NotSignedIn(str(exc).split(": sign in again")[0]) from None
    path = config.save(config.SavedSession(server=args.server.rstrip("/"),
                                           username=answer["user"]["username"],
                                           token=answer["token"],
                                           expires_at=answer.get("expires_at")))
    out.print(f"Signed in to {args.server} as {answer['user']['username']} "
              f"(session kept in {path}, until {_when(answer.get('expires_at'))} UTC).",
              markup=False)
    return exits.OK


async def cmd_logout(args) -> int:
    try:
        async with await _api() as api:
            await api.call("POST", "/auth/logout")
    except (NotSignedIn, exits.ApiError):
        pass  # gone already: forgetting it here is all that is left
    config.forget()
    out.print("Signed out.")
    return exits.OK


async def cmd_backups(args) -> int:
    async with await _api() as api:
        params = {"host": args.host} if args.host else None
        backups = await api.all("/backups", params)
    if args.json:
        _print_json(backups)
        return exits.OK
    out.print(_table("Backups", ["id", "host", "date", "kind", "status", "size", "contents"], [
        [b["id"], b["host"], _when(b.get("completed_at") or b.get("started_at")), b["kind"],
         b["status"], _size(b.get("size_bytes")), "image" if b.get("is_image") else "files"]
        for b in backups]))
    if not backups:
        out.print("No backups." + (" (Is the host name right?)" if args.host else ""))
    return exits.OK


async def cmd_recoveries(args) -> int:
    async with await _api() as api:
        recoveries = await api.all("/recoveries")
    if args.json:
        _print_json(recoveries)
        return exits.OK
    out.print(_table("Recoveries", ["id", "host", "target", "state", "progress", "started"], [
        [r["id"], r["host"], r["target"], r["state"], f"{r['total_progress']} %",
         _when(r.get("created_at"))] for r in recoveries]))
    return exits.OK


def _describe(recovery: dict[str, Any]) -> list[str]:
    lines = [f"Recovery {recovery['id']} of {recovery.get('host')} "
             f"(backup {recovery.get('backup_id')}) to {recovery.get('target')}",
             f"State: {recovery['state']} — {STATE_WORDS.get(recovery['state'], '')}",
             f"Progress: {recovery.get('total_progress', 0)} % overall, "
             f"{recovery.get('state_progress', 0)} % of this state"]
    if recovery.get("message"):
        lines.append(f"Message: {recovery['message']}")
    if recovery.get("failure_reason"):
        lines.append(f"Failed because: {recovery['failure_reason']}")
    if recovery.get("state") == "complete" and recovery.get("target") == "local":
        lines.append(f"Image: {_size(recovery.get('image_bytes'))}, SHA-256 "
                     f"{recovery.get('image_sha256') or '—'}; get it with "
                     f"`reclo-recover download {recovery['id']} DEST`")
    if recovery.get("instance_id"):
        lines.append(f"Instance: {recovery['instance_id']} (see `reclo-recover instances`)")
    return lines


async def _wait(api: Api, recovery: dict[str, Any], as_json: bool) -> dict[str, Any]:
    display = JsonLines() if as_json else Bars(err)
    with display:
        display.update(recovery)
        return await follow(api, recovery["id"], display.update)


def ask_passphrase(args) -> None:
    args.passphrase = os.environ.get(PASSPHRASE_ENV)
    if args.ask_passphrase:
        if not sys.stdin.isatty():
            raise UsageError(f"--ask-passphrase needs a terminal: set {PASSPHRASE_ENV} instead")
        args.passphrase = getpass.getpass("Backup passphrase: ")


async def cmd_start(args) -> int:
    body: dict[str, Any] = {"backup_id": args.backup, "target": args.target}
    if args.format:
        if args.target != "local":
            raise UsageError("--format is for a local image; AWS takes what EC2 imports")
        body["format"] = args.format
    if args.instance_type:
        if args.target != "aws":
            raise UsageError("--instance-type is for a recovery to AWS")
        body["instance_type"] = args.instance_type
    if args.passphrase:
        body["passphrase"] = args.passphrase
    async with await _api() as api:
        recovery = await api.call("POST", "/recoveries", json_body=body)
        if not args.wait:
            if args.json:
                print(json_line(recovery), flush=True)
            else:
                out.print(f"Recovery {recovery['id']} started. Follow it with "
                          f"`reclo-recover status {recovery['id']}`.", markup=False)
            return exits.OK
        final = await _wait(api, recovery, args.json)
    if not args.json:
        for line in _describe(final):
            out.print(line, markup=False)
    return exits.OK if final["state"] == "complete" else exits.FAILED


async def cmd_status(args) -> int:
    async with await _api() as api:
        recovery = await api.call("GET", f"/recoveries/{seg(args.recovery)}")
        if args.wait and recovery["state"] not in FINAL_STATES:
            recovery = await _wait(api, recovery, args.json)  # JSON lines, as start --wait
        elif args.wait and args.json:
            print(json_line(recovery), flush=True)
    if args.json and not args.wait:
        _print_json(recovery)
    elif not args.json:
        for line in _describe(recovery):
            out.print(line, markup=False)
    return exits.FAILED if args.wait and recovery["state"] == "failed" else exits.OK


async def cmd_cancel(args) -> int:
    async with await _api() as api:
        recovery = await api.call("POST", f"/recoveries/{seg(args.recovery)}/cancel")
    out.print(f"Recovery {args.recovery} is {recovery.get('state', 'cancelled')}.", markup=False)
    return exits.OK


async def cmd_instances(args) -> int:
    async with await _api() as api:
        instances = await api.all("/instances")
    if args.json:
        _print_json(instances)
        return exits.OK
    out.print(_table("Instances", ["id", "provider", "type", "state", "address", "vpn", "recovery"], [
        [i["id"], i["provider"], i.get("instance_type") or "—", i["state"], i.get("address") or "—",
         i.get("vpn_state") or "—", i["recovery_id"]] for i in instances]))
    return exits.OK


def ask_to_confirm(args) -> None:
    args.confirmed = args.action != "terminate" or args.yes
    if not args.confirmed:
        if not sys.stdin.isatty():
            raise UsageError("terminate deletes the machine and its disk: add --yes to confirm")
        answer = input(f"Terminate {args.instance}? Its disk is deleted for good. Type yes: ")
        args.confirmed = answer.strip().lower() == "yes"


async def cmd_instance(args) -> int:
    if not args.confirmed:
        out.print("Not terminated.")
        return exits.OK
    async with await _api() as api:
        instance = await api.call("POST", f"/instances/{seg(args.instance)}/{args.action}")
    state = instance.get("state") if isinstance(instance, dict) else None
    out.print(f"Instance {args.instance}: {args.action} asked" + (f"; now {state}." if state else "."),
              markup=False)
    return exits.OK


async def cmd_vpn(args) -> int:
    if args.vpn_action == "config":
        async with await _api() as api:
            text, _ = await vpn.new_config(api, args.instance)
        # Not the service's suggested name: wg-quick and WireGuard for Windows name the
        # tunnel after the file, which must then be a valid interface name.
        path = Path(args.output) if args.output else Path(vpn.tunnel_file(args.instance).name)
        if path.exists() and not args.force:
            raise RecoverError(f"{path} exists already: choose another name with -o, or --force",
                               exits.REFUSED)
        vpn.write_config(path, text)
        out.print(f"Wrote {path}: its private key was made here and never sent. "
                  f"Bring it up with `reclo-recover vpn up {args.instance} --config {path}`, "
                  f"`sudo wg-quick up {path}` or the WireGuard app.", markup=False)
        return exits.OK
    conf = vpn.tunnel_file(args.instance)
    if args.vpn_action == "up":
        argv = vpn.commands("up", conf)  # says what to install before asking for a peer
        if args.config:
            # A file made earlier (`vpn config`, perhaps on another computer).
            vpn.write_config(conf, vpn.checked_config(Path(args.config).read_text()))
        elif not conf.exists():
            async with await _api() as api:
                text, _ = await vpn.new_config(api, args.instance)
            vpn.write_config(conf, text)
        await vpn.run(argv)
        out.print(f"The tunnel {conf.stem} is up.", markup=False)
        return exits.OK
    if not conf.exists():
        raise RecoverError(f"no tunnel for {args.instance} on this computer", exits.NOT_FOUND)
    await vpn.run(vpn.commands("down", conf))
    out.print(f"The tunnel {conf.stem} is down.", markup=False)
    return exits.OK


async def cmd_download(args) -> int:
    async with await _api() as api:
        if args.json:
            def report(done: int, total: int | None) -> None:
                return None
            result = await download(api, args.recovery, Path(args.dest), report)
        else:
            progress = Progress(TextColumn("image"), BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), TimeRemainingColumn(), console=err)
            task = progress.add_task("image", total=None)
            with progress:
                result = await download(api, args.recovery, Path(args.dest),
                                        lambda done, total: progress.update(task, completed=done,
                                                                            total=total))
    if args.json:
        print(json.dumps({"path": str(result.path), "size": result.size,
                          "sha256": result.sha256, "resumed_from": result.resumed_from}))
    else:
        resumed = f", resumed at {_size(result.resumed_from)}" if result.resumed_from else ""
        out.print(f"Saved {result.path} ({_size(result.size)}{resumed}); SHA-256 {result.sha256} "
                  "verified.", markup=False)
    return exits.OK


# --- the parser ------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="reclo-recover",
                                  description="ReClo Recovery Manager: recover a server from its backups.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("login", help="sign in (password from RECLO_PASSWORD or a prompt)")
    p.add_argument("--server", required=True, help="the ReClo address, e.g. https://reclo.example.com")
    p.add_argument("--username", required=True)
    p.set_defaults(run=cmd_login, ask=ask_password)

    p = commands.add_parser("logout", help="end the session")
    p.set_defaults(run=cmd_logout)

    p = commands.add_parser("backups", help="list backups")
    p.add_argument("--host", help="only this host (its name or id)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=cmd_backups)

    p = commands.add_parser("recoveries", help="list recoveries")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_recoveries)

    p = commands.add_parser("start", help="recover a backup")
    p.add_argument("backup", help="the backup's id (see `backups`)")
    p.add_argument("--target", required=True, choices=["local", "aws"],
                   help="local: a disk image to download; aws: a machine in EC2")
    p.add_argument("--format", choices=["raw", "vhd", "vmdk"], help="the local image's format (raw)")
    p.add_argument("--instance-type", help="the EC2 instance type, e.g. m6i.large")
    p.add_argument("--ask-passphrase", action="store_true",
                   help=f"prompt for the backup passphrase (or set {PASSPHRASE_ENV})")
    p.add_argument("--wait", action="store_true", help="follow it to the end")
    p.add_argument("--json", action="store_true", help="JSON lines instead of bars")
    p.set_defaults(run=cmd_start, ask=ask_passphrase)

    p = commands.add_parser("status", help="a recovery's state and progress")
    p.add_argument("recovery")
    p.add_argument("--wait", action="store_true", help="follow it to the end")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_status)

    p = commands.add_parser("cancel", help="cancel a recovery")
    p.add_argument("recovery")
    p.set_defaults(run=cmd_cancel)

    p = commands.add_parser("instances", help="list recovered machines")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_instances)

    p = commands.add_parser("instance", help="start, stop or terminate a machine")
    p.add_argument("action", choices=["start", "stop", "terminate"])
    p.add_argument("instance")
    p.add_argument("--yes", action="store_true", help="terminate without asking")
    p.set_defaults(run=cmd_instance, ask=ask_to_confirm)

    p = commands.add_parser("vpn", help="the VPN to a recovered machine")
    vpn_commands = p.add_subparsers(dest="vpn_action", required=True, metavar="ACTION")
    c = vpn_commands.add_parser("config", help="write a WireGuard .conf (key made here)")
    c.add_argument("instance")
    c.add_argument("-o", "--output", help="the file to write (the server's suggested name)")
    c.add_argument("--force", action="store_true", help="overwrite the file")
    c = vpn_commands.add_parser("up", help="bring the tunnel up (wg-quick, or WireGuard's "
                                             "service on Windows)")
    c.add_argument("instance")
    c.add_argument("--config", metavar="FILE",
                   help="use this .conf (from `vpn config`) instead of making a new key")
    c = vpn_commands.add_parser("down", help="bring the tunnel down")
    c.add_argument("instance")
    p.set_defaults(run=cmd_vpn)

    p = commands.add_parser("download", help="download a local recovery's image (resumable)")
    p.add_argument("recovery")
    p.add_argument("dest", help="a file name, or a folder to put it in")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_download)
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        # Prompts come before the event loop: there, Ctrl-C would wait for Enter.
        if getattr(args, "ask", None) is not None:
            try:
                args.ask(args)
            except EOFError:  # Ctrl-D, or input that ran out
                raise UsageError("no answer given (end of input)") from None
        code = asyncio.run(args.run(args))
    except KeyboardInterrupt:
        err.print("interrupted")
        code = exits.INTERRUPTED
    except RecoverError as exc:
        err.print(f"reclo-recover: {exc}", markup=False)
        code = exc.code
    except OSError as exc:
        err.print(f"reclo-recover: {exc.strerror or exc}"
                  + (f": {exc.filename}" if exc.filename else ""), markup=False)
        code = exits.FAILED
    except Exception as exc:  # a defect of ours: one line to report, not a traceback
        err.print(f"reclo-recover: unexpected {exc.__class__.__name__}: {exc} "
                  "(please report this with the command that led to it)", markup=False)
        code = exits.FAILED
    sys.exit(code)


if __name__ == "__main__":
    main()
