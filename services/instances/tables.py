"""The tables the instances service owns: ``instances`` (the seed's table), the recovery
environments with their VPN gateway (``vpn_environments``) and ``vpn_peers``, plus outbox
and inbox.

The seed's exact columns of ``instances`` are not in this repository (only its name and
purpose are: the machines recoveries became, cleaned up by the FreeInstances job); these
columns are ReClo's, chosen for what the service does (docs/instances.md).
"""

from sqlalchemy import ForeignKey, Index, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UTCDateTime
from shared.inbox import inbox_table
from shared.outbox import outbox_table

metadata = MetaData()


class Base(DeclarativeBase):
    metadata = metadata


class EnvironmentRow(Base):
    """One user's recovery environment on one provider: its WireGuard gateway and network.
    A new generation replaces a retired one (its gateway is gone, so are its peers)."""

    __tablename__ = "vpn_environments"
    __table_args__ = (UniqueConstraint("user_id", "provider", "generation"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(String(16))
    generation: Mapped[int] = mapped_column(Integer)
    # Idempotency token of the gateway's launch, the same on every retry.
    token: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # provisioning | ready | failed | retired
    # Comma-separated networks a client routes through the gateway (the recovery subnet).
    routed_cidrs: Mapped[str] = mapped_column(String(1024), default="")
    vpc_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    gateway_group_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    machine_group_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    gateway_instance_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    gateway_public_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    endpoint: Mapped[str | None] = mapped_column(String(300), nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at = mapped_column(UTCDateTime, nullable=False)
    ready_at = mapped_column(UTCDateTime, nullable=True)
    retired_at = mapped_column(UTCDateTime, nullable=True)


class InstanceRow(Base):
    __tablename__ = "instances"
    __table_args__ = (
        Index("ix_instances_user", "user_id", "created_at", "id"),
        Index("ix_instances_state", "state", "stopped_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64))
    # One machine per recovery: a repeated ImportCompleted finds it instead of launching.
    recovery_id: Mapped[str] = mapped_column(String(64), unique=True)
    provider: Mapped[str] = mapped_column(String(16))  # aws | local
    # The EC2 instance id, or the local machine's name.
    provider_instance_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The AMI id (aws) or the reference to the image file kept by recovery (local).
    image_ref: Mapped[str] = mapped_column(String(1024))
    # pending | running | stopped | terminated | failed (domain.py)
    state: Mapped[str] = mapped_column(String(16))
    # The private address in the recovery network.
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    instance_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    environment_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("vpn_environments.id"), nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at = mapped_column(UTCDateTime, nullable=False)
    updated_at = mapped_column(UTCDateTime, nullable=False)
    # First time it ran: InstanceReady is sent then, once.
    ready_at = mapped_column(UTCDateTime, nullable=True)
    stopped_at = mapped_column(UTCDateTime, nullable=True)
    terminated_at = mapped_column(UTCDateTime, nullable=True)
    # When the AMI and its snapshots were deleted (aws).
    image_released_at = mapped_column(UTCDateTime, nullable=True)


class PeerRow(Base):
    """A client of an environment's VPN: its public key (never a private key) and its
    address in the tunnel, unique within the environment."""

    __tablename__ = "vpn_peers"
    __table_args__ = (
        UniqueConstraint("environment_id", "public_key"),
        UniqueConstraint("environment_id", "address"),
        Index("ix_vpn_peers_instance", "instance_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    environment_id: Mapped[str] = mapped_column(String(32), ForeignKey("vpn_environments.id"))
    user_id: Mapped[str] = mapped_column(String(64))
    # The instance it was asked for (it reaches every machine of the environment).
    instance_id: Mapped[str] = mapped_column(String(32), ForeignKey("instances.id"))
    name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    public_key: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(45))
    created_at = mapped_column(UTCDateTime, nullable=False)


outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
