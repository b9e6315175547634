"""Exit codes of reclo-recover, and the errors that carry them.

Scripts act on these numbers (docs/recovery-manager.md lists them), so they never change
meaning. Each error says in one line what went wrong and, where it can, what to do.
"""

from __future__ import annotations

OK = 0
FAILED = 1  # the command ran but its work failed: the recovery failed, a download is corrupt
USAGE = 2  # bad arguments: running it again unchanged will not help
NOT_SIGNED_IN = 3  # no session, or it expired or was revoked: run `reclo-recover login`
NOT_FOUND = 4  # no such backup, recovery or instance (or not yours)
UNREACHABLE = 5  # the server did not answer, or answered that it cannot serve now
REFUSED = 6  # the server refused the request as it stands (a conflict, invalid input)
TOOL_MISSING = 7  # a program this command needs is not installed (wg-quick, WireGuard)
INTERRUPTED = 130  # Ctrl-C, as shells report it (128 + SIGINT)


class RecoverError(Exception):
    """An error the CLI prints as one line and turns into its exit code."""

    code = FAILED

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class UsageError(RecoverError):
    code = USAGE


class NotSignedIn(RecoverError):
    code = NOT_SIGNED_IN


class Unreachable(RecoverError):
    code = UNREACHABLE


class ToolMissing(RecoverError):
    code = TOOL_MISSING


class ApiError(RecoverError):
    """The server's refusal, in its own words (problem+json ``detail``)."""

    def __init__(self, status: int, message: str, errors: list | None = None) -> None:
        super().__init__(message, code_for_status(status))
        self.status = status
        self.errors = errors or []


def code_for_status(status: int) -> int:
    if status == 401:
        return NOT_SIGNED_IN
    if status in (403, 404):
        return NOT_FOUND
    if status in (429, 502, 503, 504):
        return UNREACHABLE
    if 400 <= status < 500:
        return REFUSED
    return FAILED
