"""Typed keys for what the middleware stores on the application and on each request."""

from typing import Any

from aiohttp import web

from shared.http.identity import Identity

RUNTIME = web.AppKey("runtime", Any)
REQUEST_ID = web.RequestKey("request_id", str)
IDENTITY = web.RequestKey("identity", Identity)
