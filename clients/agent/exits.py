"""Exit codes of reclo-agent, and the errors that carry them.

Scripts and monitoring act on these numbers (docs/agent.md lists them), so they never
change meaning. Each error names what went wrong in words a server administrator can act on.
"""

from __future__ import annotations

OK = 0
FAILED = 1  # the command did not do its job (a backup failed, a pre command failed, ...)
USAGE = 2  # bad arguments or configuration: running it again unchanged will not help
WARNINGS = 3  # done, but some files were skipped or changed while read
UNREACHABLE = 4  # the server did not answer: try again later
AUTH = 5  # wrong passphrase, or the server refused the agent key / the password
DAMAGED = 6  # check found problems, or a restore could not restore every file intact
INTERRUPTED = 130  # Ctrl-C / SIGINT, as shells report it (128 + 2)


class AgentError(Exception):
    """An error the CLI reports as one line and turns into its exit code."""

    code = FAILED

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class UsageError(AgentError):
    code = USAGE


class ConfigError(AgentError):
    code = USAGE


class ServerUnreachable(AgentError):
    code = UNREACHABLE


class AuthRefused(AgentError):
    code = AUTH


class HookFailed(AgentError):
    """A pre command failed: the backup does not run (its output says why)."""

    code = FAILED


def code_for(error: BaseException) -> tuple[int, str]:
    """The exit code and one-line message for any error a command may end with."""
    import asyncio
    import sys

    from shared.format import errors as fe

    aiohttp = sys.modules.get("aiohttp")  # not loaded: the error cannot be one of its own

    if isinstance(error, AgentError):
        return error.code, str(error)
    if isinstance(error, (KeyboardInterrupt, asyncio.CancelledError)):
        return INTERRUPTED, "interrupted"
    if isinstance(error, (fe.WrongPassphrase, fe.KeyUnavailable)):
        return AUTH, f"{error} (check RECLO_PASSPHRASE or the secrets file)"
    if isinstance(error, (fe.RestoreIncomplete, fe.UnsafePath)):
        return DAMAGED, str(error)
    if isinstance(error, (fe.SnapshotNotFound, fe.PathNotFound, fe.RepositoryNotFound, fe.RepositoryExists)):
        return USAGE, str(error)
    status = getattr(error, "status", None)
    if isinstance(status, int):  # the remote store's ApiError
        if status in (401, 403):
            return AUTH, f"the server refused the agent key: {error} (revoked? run `reclo-agent register` again)"
        if status in (429, 502, 503, 504):
            return UNREACHABLE, f"the server cannot serve now: {error}"
    network = (asyncio.TimeoutError, ConnectionError) + ((aiohttp.ClientConnectionError,) if aiohttp else ())
    if isinstance(error, network):
        return UNREACHABLE, f"cannot reach the server: {error.__class__.__name__}: {error}"
    if isinstance(error, fe.FormatError):
        return FAILED, str(error)
    if isinstance(error, OSError):
        return FAILED, f"{error.strerror or error}: {error.filename}" if error.filename else str(error)
    return FAILED, f"{error.__class__.__name__}: {error}"
