"""Settings from ``RECLO_*`` environment variables, one section per service.

Nested sections use a double underscore: ``RECLO_AUTH__SESSION_TTL_SECONDS=3600``.
Secrets (database passwords inside URLs, the internal signing key, AWS credentials) are read
from the environment only; nothing here has a default secret.
"""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

SERVICES = ("gateway", "auth", "backup", "recovery", "instances", "scheduler")

# Where each service listens when it runs alone (`reclo serve X`) on one machine.
DEFAULT_PORTS = {
    "gateway": 8080,
    "auth": 8081,
    "backup": 8082,
    "recovery": 8083,
    "instances": 8084,
    "scheduler": 8085,
}


class ServiceSettings(BaseModel):
    """What every service has: where it listens, where others reach it, its database."""

    host: str = "127.0.0.1"
    port: int | None = None
    # Base URL the gateway uses to reach this service (`http://auth:8081` in Kubernetes).
    url: str | None = None
    # Overrides the database derived from RECLO_DATABASE_URL for this service alone.
    database_url: SecretStr | None = None


class AuthSettings(ServiceSettings):
    session_ttl_seconds: int = Field(default=7 * 24 * 3600, gt=0)
    # Login throttling: failed attempts allowed within the window before 429.
    login_window_seconds: int = Field(default=300, gt=0)
    login_failures_per_username: int = Field(default=10, gt=0)
    login_failures_per_address: int = Field(default=30, gt=0)
    # Argon2id cost; the defaults are argon2-cffi's (RFC 9106, low-memory profile).
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_kib: int = Field(default=65536, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)

    # --- notifications (docs/notifications.md) ---
    # Seconds before each retry of a delivery that failed; after the last, it is given up
    # (`failed`, with the last error). A receiver down for a deploy gets the message within
    # minutes; one down for half an hour still gets it.
    notify_retry_delays: tuple[float, ...] = (10.0, 60.0, 300.0, 1800.0)
    # Deliveries in flight at once per auth replica; each is bounded by its timeout below,
    # and one webhook URL or e-mail address has at most one of them.
    notify_concurrency: int = Field(default=8, gt=0)
    # How long one webhook POST (connect, send, answer) may take.
    notify_webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    # How long one SMTP conversation may take.
    notify_smtp_timeout_seconds: float = Field(default=30.0, gt=0)
    # How often the sender looks for due deliveries when nothing woke it (another replica's
    # events, a retry scheduled by another replica).
    notify_poll_seconds: float = Field(default=5.0, gt=0)
    # After a secret rotation, webhooks are also signed with the old secret for this long,
    # so a receiver can switch without losing messages; 0 ends the old one at once.
    notify_secret_grace_seconds: float = Field(default=24 * 3600, ge=0)
    # Webhooks to loopback, private, link-local (cloud metadata) addresses are refused, so
    # a customer can't make ReClo probe its own network. Allow for a private deployment.
    notify_allow_private_webhooks: bool = False
    # Delivered and failed deliveries are listed this long, then deleted.
    notify_keep_days: float = Field(default=30.0, gt=0)
    # SMTP relay for e-mail; unset: this server sends no e-mail (settings refuse one).
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, gt=0, lt=65536)
    # "starttls" (submission, port 587), "tls" (implicit TLS, port 465) or "none" (a relay
    # on the same host or network only: the password would travel in clear).
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "ReClo <reclo@localhost>"


class GatewaySettings(ServiceSettings):
    # How long a token's introspection result is trusted: revocation takes effect within it.
    token_cache_seconds: float = Field(default=5.0, ge=0)
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # Backup objects through /api/v1/objects (embedded object store): a pack plus margin.
    max_object_bytes: int = Field(default=128 * 1024 * 1024, gt=0)
    upstream_timeout_seconds: float = Field(default=30.0, gt=0)


class BackupSettings(ServiceSettings):
    # Object store: "auto" = S3 when RECLO_S3_ENDPOINT is set, else the local folder store
    # under <data_dir>/objects (the embedded mode); "s3" = S3 even without an endpoint (AWS).
    store: Literal["auto", "local", "s3"] = "auto"
    bucket: str = Field(default="reclo-client-backups", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    # Every key the service writes starts with this (e.g. "prod/"); empty or ending in "/".
    key_prefix: str = Field(default="", pattern=r"^([a-z0-9._-]+/)*$")
    # Create the bucket when missing. Unset: only against a custom endpoint (moto, MinIO in
    # development and tests), never against AWS itself, where buckets are provisioned.
    create_bucket: bool | None = None
    # Where agents reach S3 when that differs from RECLO_S3_ENDPOINT (e.g. a compose service
    # name inside, localhost outside); presigned URLs are signed for this host.
    presign_endpoint: str | None = None
    # Presigned URLs live this long (shared/api/backup.py URL_TTL_SECONDS by default).
    url_ttl_seconds: int = Field(default=900, gt=0, le=7 * 24 * 3600)
    # A host whose last successful backup is older than this is flagged overdue (daily
    # backups plus two hours of slack for a slow one).
    overdue_after_hours: float = Field(default=26.0, gt=0)
    # A session with no request for this long is abandoned: marked failed, its uploads left
    # to garbage collection.
    session_timeout_hours: float = Field(default=24.0, gt=0)
    # The retention policy of a host that has none of its own (restic-like: the newest
    # backup of each of the last N days, weeks and months is kept).
    retention_keep_last: int = Field(default=0, ge=0)
    retention_keep_daily: int = Field(default=7, ge=0)
    retention_keep_weekly: int = Field(default=4, ge=0)
    retention_keep_monthly: int = Field(default=12, ge=0)
    # Garbage collection deletes an unreferenced pack only once it is older than this: a
    # backup that started before a forget may still commit packs it reuses, and the next
    # backup adopts what an interrupted one uploaded.
    gc_grace_seconds: float = Field(default=24 * 3600, ge=0)
    # How often the collector looks for hosts with garbage when nothing woke it.
    gc_poll_seconds: float = Field(default=300.0, gt=0)
    # Existence checks (HEAD) in flight at once for one request.
    head_concurrency: int = Field(default=32, gt=0)


class RecoverySettings(ServiceSettings):
    # Where recovered machines may go: "local" keeps the image for download, "aws" imports
    # it into EC2 (needs the IAM setup of docs/aws.md, so it is off until asked for).
    targets: tuple[Literal["local", "aws"], ...] = ("local",)
    # Image assembly and conversion (unset: <data_dir>/recovery/scratch); needs room for a
    # disk's data twice over when it is converted.
    scratch_dir: Path | None = None
    # Finished local images, kept for download (unset: <data_dir>/recovery/images).
    images_dir: Path | None = None
    # Left free on the scratch disk beyond what an image needs, so a recovery never fills
    # the disk other work shares.
    min_free_bytes: int = Field(default=1 << 30, ge=0)
    # Recoveries one worker runs at once; each is disk, network and CPU heavy.
    max_concurrent: int = Field(default=2, gt=0)
    # A worker renews its claim on a task every third of this; a task whose claim lapsed is
    # resumed by another worker at the next reconcile sweep.
    lease_seconds: float = Field(default=60.0, gt=0)
    # Progress is persisted and published when it moved this many percent, or this long
    # after the last time (whichever comes first).
    progress_step_percent: int = Field(default=2, gt=0, le=100)
    progress_interval_seconds: float = Field(default=2.0, gt=0)
    # Chunks fetched and decrypted ahead of the one being written.
    download_concurrency: int = Field(default=8, gt=0)
    # A task not complete this long after it was requested fails (the seed's 24 hours).
    timeout_hours: float = Field(default=24.0, gt=0)
    # Open repositories through their KMS key slot when the request brings no passphrase
    # (the customer enabled server-side recovery; needs kms:Decrypt, docs/aws.md).
    kms_enabled: bool = False
    # AWS: unset endpoint = AWS itself (or RECLO_S3_ENDPOINT, e.g. moto, for every AWS API);
    # unset region = RECLO_S3_REGION.
    aws_endpoint: str | None = None
    aws_region: str | None = None
    import_bucket: str = Field(default="reclo-imported-vms",
                               pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    # Create the import bucket when missing; unset: only against a custom endpoint (moto).
    create_import_bucket: bool | None = None
    # The service role VM Import assumes to read the disk from the bucket.
    vmimport_role: str = Field(default="vmimport", min_length=1, max_length=64)
    # The disk format sent to EC2: a stream-optimized VMDK or a dynamic VHD.
    aws_disk_format: Literal["vmdk", "vhd"] = "vmdk"
    # S3 multipart part size (5 MiB is S3's minimum; 10 000 parts its maximum count).
    upload_part_bytes: int = Field(default=64 << 20, ge=5 << 20)
    import_poll_seconds: float = Field(default=15.0, gt=0)
    # An import whose progress does not move for this long is cancelled and fails.
    import_stall_seconds: float = Field(default=3600.0, gt=0)
    qemu_img: str = "qemu-img"


class InstancesSettings(ServiceSettings):
    # --- aws provider (docs/aws.md "Instances") ---
    # EC2 API endpoint (moto in development and tests); unset: AWS's own for the region
    # (botocore also honours AWS_ENDPOINT_URL).
    ec2_endpoint: str | None = None
    # Region of the recovery environment; unset: RECLO_S3_REGION.
    region: str | None = None
    # The subnet recovered machines launch into, without public addresses.
    subnet_id: str | None = None
    # The subnet of the WireGuard gateway: one with a route to the internet, in the same
    # VPC as subnet_id; unset: subnet_id itself.
    gateway_subnet_id: str | None = None
    # Image of the gateway: Debian 12 or Ubuntu 22.04+ with cloud-init (docs/vpn.md).
    gateway_image_id: str | None = None
    gateway_instance_type: str = "t3.micro"
    # Instance type of a recovered machine.
    instance_type: str = "t3.medium"
    # Who may send packets to the gateway's WireGuard port. WireGuard answers no packet
    # without a known peer's key, so the whole internet is the default.
    vpn_client_cidr: IPv4Network = IPv4Network("0.0.0.0/0")
    # A recovered machine that is still pending after this long has failed to launch.
    launch_timeout_seconds: float = Field(default=900.0, gt=0)
    # How often pending machines and starting gateways are looked at.
    poll_seconds: float = Field(default=5.0, gt=0)

    # --- VPN (docs/vpn.md) ---
    # Addresses inside the tunnel: the gateway has the first, peers the following ones.
    vpn_subnet: IPv4Network = IPv4Network("10.77.0.0/24")
    vpn_port: int = Field(default=51820, gt=0, lt=65536)
    # Keeps the client's NAT mapping open so the gateway can reach it (WireGuard's advice).
    vpn_keepalive_seconds: int = Field(default=25, ge=0, le=65535)
    # Local provider: where clients reach this host's WireGuard gateway (host:port).
    local_vpn_endpoint: str = "127.0.0.1:51820"
    # Local provider: networks behind the local gateway that clients route into the tunnel
    # (a bridge for QEMU machines, say); the VPN subnet is always routed.
    local_routed_cidrs: list[IPv4Network] = Field(default_factory=list)

    # --- cleanup (the seed's FreeInstances job) ---
    # Stopped machines are terminated, and their images deleted, after this many days.
    stopped_retention_days: float = Field(default=14.0, gt=0)

    # --- local provider: QEMU ---
    # Start local machines under QEMU (needs qemu-system-x86_64 and an image file path).
    qemu_enabled: bool = False
    qemu_binary: str = "qemu-system-x86_64"
    qemu_memory_mib: int = Field(default=2048, ge=128)
    qemu_cpus: int = Field(default=2, ge=1)


class SchedulerSettings(ServiceSettings):
    # Job name -> five-field cron expression in UTC, or null to switch the job off; merged
    # over the defaults in services/scheduler/domain.py, so naming one job leaves the others
    # alone. From the environment as JSON:
    # RECLO_SCHEDULER__JOBS='{"TokensExpiryDue": "*/5 * * * *"}'.
    jobs: dict[str, str | None] = Field(default_factory=dict)
    # The loop sleeps until the next tick is due but never longer than this, so a stepped
    # wall clock or a database that was unreachable is noticed within it.
    max_sleep_seconds: float = Field(default=30.0, gt=0)


class BusSettings(BaseModel):
    # Unacknowledged deliveries per consumer; also the largest batch the inbox commits at
    # once (docs/events.md, group commit), so a burst costs one commit per 64 events.
    prefetch: int = Field(default=64, gt=0)
    # Seconds to wait before each retry of a failing handler; after the last, dead letter.
    retry_delays: tuple[float, ...] = (1.0, 10.0, 60.0)
    # How often the outbox relay looks for unsent events when nothing woke it.
    outbox_poll_seconds: float = Field(default=1.0, gt=0)
    # Service queues are named `<prefix>.<service>`; tests use their own prefix, and their
    # own exchange so that no other test's events reach them.
    queue_prefix: str = "reclo"
    exchange: str = "reclo.events"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECLO_", env_nested_delimiter="__", extra="ignore"
    )

    data_dir: Path = Path(".reclo")
    # mysql+aiomysql://user:password@host:3306/ — each service gets its own database
    # `reclo_<service>` on that server. Unset: SQLite files under data_dir.
    database_url: SecretStr | None = None
    # Each service's database on that server is `<prefix><service>`.
    database_prefix: str = "reclo_"
    # amqp://user:password@host:5672/ — unset: the in-process bus.
    bus_url: SecretStr | None = None
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    # HMAC key the gateway signs callers' identities with; services refuse unsigned requests.
    internal_key: SecretStr | None = Field(default=None, min_length=32)
    log_level: str = "info"
    log_format: str = "json"  # json | console

    bus: BusSettings = BusSettings()
    gateway: GatewaySettings = GatewaySettings()
    auth: AuthSettings = AuthSettings()
    backup: BackupSettings = BackupSettings()
    recovery: RecoverySettings = RecoverySettings()
    instances: InstancesSettings = InstancesSettings()
    scheduler: SchedulerSettings = SchedulerSettings()

    def section(self, service: str) -> ServiceSettings:
        """The service's own section; a name without one (a tool, a test) gets defaults."""
        section = getattr(self, service, None)
        return section if isinstance(section, ServiceSettings) else ServiceSettings()

    def port_for(self, service: str) -> int:
        port = self.section(service).port
        return DEFAULT_PORTS[service] if port is None else port

    def url_for(self, service: str) -> str:
        section = self.section(service)
        return section.url or f"http://127.0.0.1:{self.port_for(service)}"

    def database_url_for(self, service: str) -> str:
        """The database a service owns: its own override, else its own database on the shared
        server, else its own SQLite file."""
        own = self.section(service).database_url
        if own is not None:
            return own.get_secret_value()
        if self.database_url is not None:
            url = make_url(self.database_url.get_secret_value())
            if url.get_backend_name() == "sqlite":
                folder = Path(url.database or self.data_dir).parent
                return str(url.set(database=str(folder / f"{service}.db")))
            return url.set(database=f"{self.database_prefix}{service}").render_as_string(hide_password=False)
        return f"sqlite+aiosqlite:///{self.data_dir / (service + '.db')}"
