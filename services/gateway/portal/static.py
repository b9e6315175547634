"""The portal's files: one HTML page, its script modules and its stylesheet, served from
this package with headers that forbid anything not from the gateway itself."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from shared.http.problems import not_found

STATIC = Path(__file__).parent / "static"
INDEX = STATIC / "index.html"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}

# Only our own files, no inline script or style, no framing, no plugins: an injected
# <script> or style attribute would not run even if escaping were ever missed.
CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Revalidate every time (cheap: ETag/Last-Modified), so a new release shows at once.
    "Cache-Control": "no-cache",
}


def _assets() -> dict[str, Path]:
    """Every servable file by its URL path below /assets/, fixed at start: a request can
    only name one of these, never a path of its own making."""
    return {path.relative_to(STATIC).as_posix(): path
            for path in STATIC.rglob("*")
            if path.is_file() and path.suffix in CONTENT_TYPES}


def _file(path: Path) -> web.FileResponse:
    return web.FileResponse(path, headers={**SECURITY_HEADERS,
                                           "Content-Type": CONTENT_TYPES[path.suffix]})


async def page(_request: web.Request) -> web.StreamResponse:
    """Every portal address serves the one page; its script draws the screen the path names."""
    return _file(INDEX)


def add_routes(app: web.Application) -> None:
    assets = _assets()

    async def asset(request: web.Request) -> web.StreamResponse:
        path = assets.get(request.match_info["name"])
        if path is None:
            raise not_found("no such file")
        return _file(path)

    async def root(_request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/app/")

    app.router.add_get("/", root)
    app.router.add_get("/app", root)
    app.router.add_get("/app/{tail:.*}", page)
    app.router.add_get("/assets/{name:.+}", asset)
