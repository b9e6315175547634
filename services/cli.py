"""``reclo``: the server side's command line.

  reclo up [--data-dir DIR] [--port N]   every service in one process
  reclo serve SERVICE [--migrate]        one service alone (containers, Kubernetes)
  reclo migrate [SERVICE...]             apply database migrations
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_USAGE = 2


def _settings(data_dir: str | None):
    from shared.settings import Settings

    settings = Settings()
    if data_dir:
        settings.data_dir = Path(data_dir)
    return settings


def _logging(settings) -> None:
    from shared.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)


async def _up(args) -> int:
    from services.embedded import Stack
    from shared.runtime import wait_for_signal

    settings = _settings(args.data_dir)
    if args.port is not None:
        settings.gateway.port = args.port
    _logging(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(settings)
    await stack.migrate()
    try:
        await stack.start(gateway_port=settings.port_for("gateway"), embedded=True,
                          host=args.host)
        print(f"ReClo is up: http://{args.host}:{stack.gateway_port}/  "
              f"(data in {settings.data_dir.resolve()}; Ctrl-C stops it)", flush=True)
        await wait_for_signal()
    finally:
        await stack.stop()
    return 0


async def _serve(args) -> int:
    from services.embedded import Stack
    from shared.runtime import wait_for_signal

    settings = _settings(args.data_dir)
    _logging(settings)
    stack = Stack(settings, [args.service])
    if args.migrate:
        await stack.migrate()
    try:
        await stack.start(embedded=False, host=args.host)
        await wait_for_signal()
    finally:
        await stack.stop()
    return 0


async def _migrate(args) -> int:
    from services.embedded import Stack
    from services.registry import names

    settings = _settings(args.data_dir)
    _logging(settings)
    stack = Stack(settings, args.services or names())
    await stack.migrate()
    for runtime in stack.runtimes.values():
        if runtime.db is not None:
            await runtime.db.dispose()
    return 0


def parser() -> argparse.ArgumentParser:
    from services.registry import names

    top = argparse.ArgumentParser(prog="reclo", description="ReClo server")
    commands = top.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run every service in one process")
    up.add_argument("--data-dir", help="where the embedded mode keeps its data (.reclo)")
    up.add_argument("--port", type=int, help="the gateway's port (8080)")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    up.set_defaults(run=_up)

    serve = commands.add_parser("serve", help="run one service")
    serve.add_argument("service", choices=names())
    serve.add_argument("--data-dir")
    serve.add_argument("--host", default=None, help="address to listen on")
    serve.add_argument("--migrate", action="store_true", help="apply migrations first")
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("services", nargs="*", choices=[[], *names()], default=[])
    migrate.add_argument("--data-dir")
    migrate.set_defaults(run=_migrate)
    return top


def main(argv: list[str] | None = None) -> None:
    from shared.http.loop import run as run_loop  # uvloop where installed

    args = parser().parse_args(argv)
    try:
        code = run_loop(args.run(args))
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
