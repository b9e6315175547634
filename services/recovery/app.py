"""Composition root of recovery: settings, database, the backup bucket it reads, the
compute providers of the configured targets, the KMS client, the worker and the drills."""

from __future__ import annotations

from pathlib import Path

from services.recovery import api, handlers, tables
from services.recovery.drills import Drills
from services.recovery.keys import kms_unwrapper
from services.recovery.providers import ComputeProvider
from services.recovery.providers.aws import AwsProvider
from services.recovery.providers.local import LocalProvider
from services.recovery.worker import Worker
from shared.bus import Bus
from shared.format import ObjectStore
from shared.format.crypto import KmsUnwrap
from shared.objectstore import BucketStore, open_bucket_store
from shared.runtime import ServiceRuntime
from shared.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


def build_providers(settings: Settings) -> dict[str, ComputeProvider]:
    own = settings.recovery
    providers: dict[str, ComputeProvider] = {}
    if "local" in own.targets:
        providers["local"] = LocalProvider(images_dir(settings), own.qemu_img)
    if "aws" in own.targets:
        endpoint = own.aws_endpoint or settings.s3_endpoint
        create = own.create_import_bucket
        providers["aws"] = AwsProvider(
            region=own.aws_region or settings.s3_region, endpoint=endpoint,
            bucket=own.import_bucket, role=own.vmimport_role,
            create_bucket=endpoint is not None if create is None else create,
            part_bytes=own.upload_part_bytes)
    return providers


def scratch_dir(settings: Settings) -> Path:
    return Path(settings.recovery.scratch_dir or Path(settings.data_dir) / "recovery" / "scratch")


def images_dir(settings: Settings) -> Path:
    return Path(settings.recovery.images_dir or Path(settings.data_dir) / "recovery" / "images")


class Recovery:
    """What recovery's routes, handlers and worker share."""

    def __init__(self, settings: Settings, runtime: ServiceRuntime, bucket: BucketStore,
                 providers: dict[str, ComputeProvider]) -> None:
        self.settings = settings.recovery
        self.db = runtime.db
        self.outbox = runtime.outbox
        self.bucket = bucket
        self.providers = providers
        self.scratch_dir = scratch_dir(settings)
        self._aws_region = self.settings.aws_region or settings.s3_region
        self._aws_endpoint = self.settings.aws_endpoint or settings.s3_endpoint
        self._kms: KmsUnwrap | None = None
        self.worker = Worker(self)
        self.drills = Drills(self, self.worker.id)

    def backup_store(self, user_id: str, host_id: str) -> ObjectStore:
        """A host's repository: ``<user id>/<host id>/`` in the backup bucket."""
        return self.bucket.scoped(f"{user_id}/{host_id}/")

    def kms_unwrap(self) -> KmsUnwrap | None:
        """KMS Decrypt, where server-side recovery is enabled; else None."""
        if not self.settings.kms_enabled:
            return None
        if self._kms is None:
            self._kms = kms_unwrapper(self._aws_region, self._aws_endpoint)
        return self._kms

    async def close(self) -> None:
        for provider in self.providers.values():
            await provider.close()
        await self.bucket.close()


def build(settings: Settings, bus: Bus, key: bytes) -> ServiceRuntime:
    runtime = ServiceRuntime(
        name="recovery",
        settings=settings,
        bus=bus,
        key=key,
        routes=[api.routes],
        handlers=handlers.EVENT_HANDLERS,
        metadata=tables.metadata,
        migrations=MIGRATIONS,
    )
    service = Recovery(settings, runtime, open_bucket_store(settings, key),
                       build_providers(settings))
    runtime.context = service
    runtime.background.append(service.worker.run)
    runtime.background.append(service.drills.run)
    runtime.app.on_cleanup.append(lambda _app: service.close())
    return runtime
