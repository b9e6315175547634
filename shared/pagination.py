"""Keyset pagination for ``?limit=&cursor=``: stable under inserts, cheap on big tables.
A cursor is opaque to callers (base64url of the last row's sort key)."""

from __future__ import annotations

import base64
import json
from datetime import datetime

from sqlalchemy import Select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from shared.http.problems import bad_request


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, row_id = json.loads(raw)
        return datetime.fromisoformat(when), str(row_id)
    except (ValueError, TypeError):
        raise bad_request("the cursor is not one this API gave out") from None


async def paginate(session: AsyncSession, query: Select, created_col, id_col, *,
                   limit: int, cursor: str | None, newest_first: bool = False):
    """Rows of ``query`` ordered by (created, id), after ``cursor``; and the next cursor.
    ``newest_first``: the same, from the newest row down."""
    if cursor:
        created, row_id = decode_cursor(cursor)
        key, after = tuple_(created_col, id_col), tuple_(created, row_id)
        query = query.where(key < after if newest_first else key > after)
    order = (created_col.desc(), id_col.desc()) if newest_first else (created_col, id_col)
    rows = (await session.execute(query.order_by(*order).limit(limit + 1))).scalars().all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = None
    if more:
        last = rows[-1]
        next_cursor = encode_cursor(getattr(last, created_col.key), getattr(last, id_col.key))
    return rows, next_cursor
