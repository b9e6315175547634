"""Chunk ids. Apart from crypto.py so that the in-place helper process can compute them
without loading the cipher library (inplace_helper.py)."""

from __future__ import annotations

import blake3


def chunk_id(id_key: bytes, data: bytes | memoryview) -> bytes:
    """BLAKE3 keyed with the repository's id key: not the plain hash, which would tell
    anyone holding a file whether the repository has it."""
    return blake3.blake3(data, key=id_key).digest()
