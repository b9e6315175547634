"""Declared routes: who may call, what body and query they take, what they return.

One declaration gives the aiohttp route, input validation (422 problem+json listing the
fields, never echoing the input) and the route's part of the OpenAPI document.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from shared.http.identity import Identity, Kind
from shared.http.keys import IDENTITY, RUNTIME
from shared.http.problems import Problem, forbidden, unauthorized

USER: tuple[Kind, ...] = ("user",)
AGENT: tuple[Kind, ...] = ("agent",)
USER_OR_AGENT: tuple[Kind, ...] = ("user", "agent")
ANYONE: tuple[Kind, ...] = ("anonymous", "user", "agent")
SERVICE: tuple[Kind, ...] = ("service",)


@dataclass
class Call:
    """One request as a handler sees it."""

    request: web.Request
    identity: Identity
    body: Any = None
    query: Any = None

    @property
    def service(self) -> Any:
        """The service's own context object (built in its ``app.py``)."""
        return self.request.app[RUNTIME].context

    def param(self, name: str) -> str:
        return self.request.match_info[name]

    @property
    def user_id(self) -> str:
        assert self.identity.user_id is not None
        return self.identity.user_id


RouteHandler = Callable[[Call], Awaitable[Any]]


@dataclass
class Route:
    method: str
    path: str
    handler: RouteHandler
    allow: tuple[Kind, ...]
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: Any
    status: int
    summary: str
    tag: str
    errors: Sequence[int] = field(default_factory=tuple)


def validation_problem(exc: ValidationError, where: str) -> Problem:
    errors = [
        {"location": [where, *map(str, e["loc"])], "message": e["msg"], "type": e["type"]}
        for e in exc.errors(include_input=False, include_url=False)
    ]
    return Problem(422, "Invalid request", f"the {where} has {len(errors)} error(s)",
                   errors=errors)


class Routes:
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.routes: list[Route] = []

    def route(self, method: str, path: str, *, allow: tuple[Kind, ...] = USER,
              body: type[BaseModel] | None = None, query: type[BaseModel] | None = None,
              response: Any = None, status: int = 200, summary: str = "",
              errors: Sequence[int] = ()):
        def register(fn: RouteHandler) -> RouteHandler:
            self.routes.append(Route(method, path, fn, allow, body, query, response, status,
                                     summary or (fn.__doc__ or "").strip().split("\n")[0],
                                     self.tag, errors))
            return fn

        return register

    def get(self, path: str, **kw):
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw):
        return self.route("POST", path, **kw)

    def delete(self, path: str, **kw):
        return self.route("DELETE", path, **kw)

    def add_to(self, app: web.Application) -> None:
        for route in self.routes:
            app.router.add_route(route.method, route.path, _aiohttp_handler(route))


def _aiohttp_handler(route: Route):
    async def handle(request: web.Request) -> web.StreamResponse:
        identity: Identity = request.get(IDENTITY) or Identity()
        if identity.kind not in route.allow:
            if identity.kind == "anonymous":
                raise unauthorized()
            raise forbidden(f"a {identity.kind} may not call {route.method} {route.path}")
        call = Call(request, identity)
        if route.query is not None:
            try:
                call.query = route.query.model_validate(dict(request.query))
            except ValidationError as exc:
                raise validation_problem(exc, "query") from None
        if route.body is not None:
            call.body = await _read_body(request, route.body)
        result = await route.handler(call)
        return to_response(result, route.status)

    return handle


async def _read_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    raw = await request.read()
    if not raw:
        raise Problem(400, "Bad request", "a JSON body is required")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # the last: nested too deep
        raise Problem(400, "Bad request", "the body is not valid JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_problem(exc, "body") from None


def to_response(result: Any, status: int) -> web.StreamResponse:
    if isinstance(result, web.StreamResponse):
        return result
    if result is None:
        return web.Response(status=204)
    if isinstance(result, BaseModel):
        text = result.model_dump_json()
    else:
        text = json.dumps(TypeAdapter(Any).dump_python(result, mode="json"))
    return web.Response(status=status, text=text, content_type="application/json")


# ---------------------------------------------------------------------------------------
# OpenAPI
# ---------------------------------------------------------------------------------------

_STATUS_TEXT = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
                409: "Conflict", 413: "Body too large", 422: "Invalid request",
                429: "Too many requests"}


def openapi_fragment(routes: Sequence[Routes]) -> dict[str, Any]:
    """The paths and schemas of these routes (public ones only, not ``/internal``)."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}

    def ref(model: Any) -> dict[str, Any]:
        schema = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        if "title" in schema and isinstance(model, type) and issubclass(model, BaseModel):
            schemas[model.__name__] = schema
            return {"$ref": f"#/components/schemas/{model.__name__}"}
        return schema

    for group in routes:
        for r in group.routes:
            if r.path.startswith("/internal"):
                continue
            op: dict[str, Any] = {"summary": r.summary, "tags": [r.tag],
                                  "x-reclo-callers": list(r.allow)}
            if r.allow != ANYONE:
                op["security"] = [{"bearer": []}]
            params = [{"name": name[1:-1], "in": "path", "required": True,
                       "schema": {"type": "string"}}
                      for name in r.path.split("/") if name.startswith("{")]
            if r.query is not None:
                for name, f in r.query.model_fields.items():
                    params.append({"name": f.alias or name, "in": "query",
                                   "required": f.is_required(),
                                   "schema": ref(f.annotation)})
            if params:
                op["parameters"] = params
            if r.body is not None:
                op["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": ref(r.body)}}}
            ok: dict[str, Any] = {"description": "OK"}
            if r.response is not None:
                ok["content"] = {"application/json": {"schema": ref(r.response)}}
            responses: dict[str, Any] = {str(r.status): ok}
            codes = set(r.errors) | ({401, 403} if r.allow != ANYONE else set())
            codes |= {422} if (r.body or r.query) else set()
            for code in sorted(codes):
                responses[str(code)] = {"description": _STATUS_TEXT.get(code, "Error"),
                                        "content": {"application/problem+json": {
                                            "schema": {"$ref": "#/components/schemas/Problem"}}}}
            op["responses"] = responses
            paths.setdefault(r.path, {})[r.method.lower()] = op
    return {"paths": paths, "schemas": schemas}
