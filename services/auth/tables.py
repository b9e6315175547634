"""The tables auth owns: ``users`` and ``tokens`` (the seed's two), plus outbox and inbox.

``tokens`` holds both kinds of bearer credentials: session tokens (expire) and agent keys
(long-lived, bound to one host). Only a SHA-256 of a token is stored: tokens carry 256
random bits, so a fast hash is enough to make a stolen table useless.
"""

from sqlalchemy import Boolean, ForeignKey, Index, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UTCDateTime
from shared.inbox import inbox_table
from shared.outbox import outbox_table

metadata = MetaData()


class Base(DeclarativeBase):
    metadata = metadata


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    # Case-folded username: "Alice" and "alice" are one account.
    username_key: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at = mapped_column(UTCDateTime, nullable=False)
    updated_at = mapped_column(UTCDateTime, nullable=False)


class TokenRow(Base):
    __tablename__ = "tokens"
    __table_args__ = (Index("ix_tokens_user_kind", "user_id", "kind", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # session | agent
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at = mapped_column(UTCDateTime, nullable=False)
    expires_at = mapped_column(UTCDateTime, nullable=True)  # None: an agent key
    deactivated_at = mapped_column(UTCDateTime, nullable=True)
    deactivated_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)


outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
