"""Presigned URLs of the local object store (the embedded mode's stand-in for S3).

A URL is a relative path the backup service serves through the gateway::

    /api/v1/objects/<bucket>/<key>?expires=<unix seconds>&size=<bytes>&signature=<hex>

(`size` only on PUT URLs). The signature is an HMAC-SHA256 over the method, bucket, key,
expiry and size, with a key derived from the internal key, so only the backup service can
mint one, and changing any part of a URL (another key, a later expiry, another size) makes
it invalid. Whoever holds a URL may use it until it expires: like S3's, it is a bearer
credential for one object and one method.
"""

from __future__ import annotations

import hashlib
import hmac
import time

URL_PATH = "/api/v1/objects"
# Derivation label: the URL key is not the internal key itself, so a URL signature can
# never be replayed as a gateway signature or the other way round.
_DERIVATION = b"reclo/objects-url/v1"


class BadUrl(Exception):
    """A URL that is malformed, tampered with or expired (the message says which)."""


class UrlSigner:
    def __init__(self, internal_key: bytes) -> None:
        self._key = hmac.new(internal_key, _DERIVATION, hashlib.sha256).digest()

    def _mac(self, method: str, bucket: str, key: str, expires: int, size: int | None) -> str:
        message = f"{method}\n{bucket}\n{key}\n{expires}\n{'' if size is None else size}"
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def url(self, method: str, bucket: str, key: str, expires: int, size: int | None = None) -> str:
        query = f"expires={expires}"
        if size is not None:
            query += f"&size={size}"
        query += f"&signature={self._mac(method, bucket, key, expires, size)}"
        return f"{URL_PATH}/{bucket}/{key}?{query}"

    def verify(self, method: str, bucket: str, key: str, query, now: float | None = None) -> int | None:
        """Check a request's query against its method, bucket and key; returns the signed
        size (PUT) or None (GET). Raises BadUrl."""
        try:
            expires = int(query["expires"])
            signature = str(query["signature"])
            size = int(query["size"]) if method == "PUT" else None
        except (KeyError, ValueError):
            raise BadUrl("the URL is not a presigned object URL") from None
        if method != "PUT" and "size" in query:
            raise BadUrl("the URL is not signed for this method")
        expected = self._mac(method, bucket, key, expires, size)
        if not hmac.compare_digest(expected, signature):
            raise BadUrl("the URL's signature does not match")
        if (time.time() if now is None else now) > expires:
            raise BadUrl("the URL expired")
        return size
