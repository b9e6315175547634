"""Errors as RFC 9457 problem+json. Handlers raise :class:`Problem`; the middleware renders
it, and renders anything unexpected as a bare 500 with no traceback in the body."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        type_: str = "about:blank",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_
        self.headers = headers or {}
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail:
            doc["detail"] = self.detail
        if instance:
            doc["instance"] = instance
        doc.update(self.extra)
        return doc


def problem_response(problem: Problem, *, instance: str | None = None,
                     request_id: str | None = None) -> web.Response:
    body = problem.body(instance)
    if request_id:
        body["request_id"] = request_id
    return web.Response(
        status=problem.status,
        body=json.dumps(body).encode(),
        content_type=PROBLEM_JSON,
        headers=problem.headers,
    )


def bad_request(detail: str, **extra: Any) -> Problem:
    return Problem(400, "Bad request", detail, **extra)


def unauthorized(detail: str = "Authentication required") -> Problem:
    return Problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def forbidden(detail: str = "Not allowed") -> Problem:
    return Problem(403, "Forbidden", detail)


def not_found(detail: str = "Not found") -> Problem:
    return Problem(404, "Not found", detail)


def conflict(detail: str) -> Problem:
    return Problem(409, "Conflict", detail)
