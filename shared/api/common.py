from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")

MAX_PAGE = 200


class PageQuery(BaseModel):
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)
    cursor: str | None = Field(default=None, max_length=512)


class Page(BaseModel, Generic[T]):
    items: list[T]
    # Pass as ?cursor= to get the next page; absent on the last page.
    next_cursor: str | None = None
