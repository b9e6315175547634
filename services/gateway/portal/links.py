"""Download links for the browser: a page cannot add an Authorization header to a plain
download, and reading a disk image of many GiB into the page's memory is no option. So the
page asks for a short-lived link bound to one path and one caller; following it streams
the file straight from the service, Range requests included (a broken download resumes).

A link is ``<base64url JSON>.<HMAC-SHA256>`` under a key derived from the internal key: the
gateway stores nothing, and any replica accepts a link another one made.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time

from pydantic import ValidationError

from shared.http.identity import Identity

# Long enough to start a download after a click; short enough that a link left in the
# browser's history or a proxy's log is useless soon after. A download that has started
# runs to its end; resuming a broken one needs a new link (the page makes one).
LINK_TTL_SECONDS = 60
# The only files a link may fetch: the local recovery images.
LINKABLE = re.compile(r"^/api/v1/recoveries/[A-Za-z0-9_-]{1,64}/image$")
_PURPOSE = b"reclo portal download links v1"


class BadLink(Exception):
    pass


def _key(internal_key: bytes) -> bytes:
    # Its own key, so a link can never pass for an identity signature or the reverse.
    return hmac.new(internal_key, _PURPOSE, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_link(internal_key: bytes, identity: Identity, path: str,
              now: float | None = None) -> tuple[str, int]:
    """The link's token and its expiry (unix seconds)."""
    if not LINKABLE.fullmatch(path):
        raise ValueError(f"{path} cannot be linked")
    expires = int(time.time() if now is None else now) + LINK_TTL_SECONDS
    caller = identity.model_dump(exclude_none=True, include={"kind", "user_id", "username",
                                                              "token_id"})
    body = _b64(json.dumps({"p": path, "c": caller, "e": expires},
                           separators=(",", ":")).encode())
    mac = hmac.new(_key(internal_key), body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{mac}", expires


def read_link(internal_key: bytes, token: str, now: float | None = None
              ) -> tuple[Identity, str]:
    """The caller and path a link stands for; BadLink when forged, altered or expired."""
    body, _, mac = token.partition(".")
    expected = hmac.new(_key(internal_key), body.encode(), hashlib.sha256).hexdigest()
    if not mac or not hmac.compare_digest(expected, mac):
        raise BadLink("this download link is not valid")
    try:
        fields = json.loads(_unb64(body))
        path, expires = str(fields["p"]), int(fields["e"])
        identity = Identity.model_validate(fields["c"])
    except (ValueError, KeyError, TypeError, ValidationError):
        raise BadLink("this download link is not valid") from None
    if (time.time() if now is None else now) > expires:
        raise BadLink("this download link has expired; ask for a new one")
    if not LINKABLE.fullmatch(path) or identity.kind != "user":
        raise BadLink("this download link is not valid")
    return identity, path
