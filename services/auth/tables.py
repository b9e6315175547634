"""The tables auth owns: ``users`` and ``tokens`` (the seed's two), the notification
settings and deliveries of each user (docs/notifications.md), plus outbox and inbox.

``tokens`` holds both kinds of bearer credentials: session tokens (expire) and agent keys
(long-lived, bound to one host). Only a SHA-256 of a token is stored: tokens carry 256
random bits, so a fast hash is enough to make a stolen table useless.
"""

from sqlalchemy import Boolean, ForeignKey, Index, Integer, MetaData, String, Text, UniqueConstraint
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


class NotificationSettingsRow(Base):
    """Where and what a user wants to hear; one row per user who set anything."""

    __tablename__ = "notification_settings"

    user_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id"), primary_key=True)
    webhook_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    # The HMAC key webhooks are signed with. Kept as is, not hashed: the server must sign
    # with it; it only proves to the customer's receiver that a message came from ReClo.
    webhook_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The secret before the last rotation, still signed with until previous_secret_until.
    previous_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    previous_secret_until = mapped_column(UTCDateTime, nullable=True)
    email: Mapped[str | None] = mapped_column(String(254), nullable=True)
    # Comma-separated event types; NULL means every kind, including ones added later.
    events: Mapped[str | None] = mapped_column(String(512), nullable=True)
    created_at = mapped_column(UTCDateTime, nullable=False)
    updated_at = mapped_column(UTCDateTime, nullable=False)


class NotificationDeliveryRow(Base):
    """One message to one destination (a webhook URL or an e-mail address): recorded when
    the event is handled, sent by the background sender, retried until delivered or failed.

    ``state``: pending (due at ``next_attempt_at``), sending (claimed by a sender until
    ``next_attempt_at``; past it, another sender takes it over), delivered, failed."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        # An event makes at most one message per channel.
        UniqueConstraint("event_id", "channel", name="uq_notification_deliveries_event"),
        Index("ix_notification_deliveries_due", "state", "next_attempt_at"),
        Index("ix_notification_deliveries_user", "user_id", "created_at", "id"),
        Index("ix_notification_deliveries_finished", "finished_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id"))
    event_id: Mapped[str] = mapped_column(String(36))
    event_type: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(16))  # webhook | email
    # The URL or address as it was when the event came.
    target: Mapped[str] = mapped_column(String(2048))
    # The JSON document a webhook receives; the e-mail is written from it.
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at = mapped_column(UTCDateTime, nullable=False)
    # When it was delivered or given up.
    finished_at = mapped_column(UTCDateTime, nullable=True)


outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
