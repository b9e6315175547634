"""Pre and post commands of a source (e.g. `wbadmin start backup ...` before an image
source, or stopping and starting a database around a folder).

A pre command runs before the backup reads anything; if it fails (non-zero exit, cannot
start, or runs past the timeout) the backup does not run and fails with the command's
output, because backing up a half-written VHDX would be worse than no backup. A post
command runs after the backup whatever happened, for every source whose pre command
succeeded (or that had none), with RECLO_BACKUP_STATUS=ok|failed in its environment; a
failing post command is a warning, since the backup itself is already stored.

A command given as a string runs through the shell (`sh -c` or `cmd /c`), as an
administrator would type it; given as a list it runs as that argument vector.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass

from .exits import HookFailed

# Output kept for the error message and the log: the end of it says why a command failed.
OUTPUT_TAIL = 4000


@dataclass
class HookResult:
    command: str
    returncode: int
    output: str
    seconds: float


def describe(command: str | list[str]) -> str:
    return command if isinstance(command, str) else subprocess.list2cmdline(command)


async def run(command: str | list[str], *, timeout: float, env: dict[str, str] | None = None) -> HookResult:
    """Run a command to its end; HookFailed if it cannot start or times out."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    full_env = {**os.environ, **(env or {})}
    try:
        if isinstance(command, str):
            proc = await asyncio.create_subprocess_shell(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env)
        else:
            proc = await asyncio.create_subprocess_exec(
                *command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env)
    except OSError as e:
        raise HookFailed(f"cannot start {describe(command)!r}: {e}") from None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise HookFailed(f"{describe(command)!r} was still running after {timeout:.0f} s and was stopped") from None
    except asyncio.CancelledError:
        proc.kill()
        raise
    text = out.decode(errors="replace")
    return HookResult(describe(command), proc.returncode, text[-OUTPUT_TAIL:], loop.time() - started)


async def run_pre(command: str | list[str], *, timeout: float) -> HookResult:
    result = await run(command, timeout=timeout)
    if result.returncode != 0:
        output = result.output.strip() or "(no output)"
        raise HookFailed(f"pre command {result.command!r} failed with exit code {result.returncode}:\n{output}")
    return result
