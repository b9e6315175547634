"""What the drill tests share: the weekly tick as the scheduler sends it, the drill events
recovery publishes, the API's view of drills, and damage done to a pack in the store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.events import BackupsVerifyDue, Envelope, envelope_for
from shared.format import Repository
from shared.format.repository import pack_key
from shared.format.snapshot import IMAGE
from shared.objectstore import open_bucket_store
from tests.harness import Api
from tests.recovery.helpers import PASSPHRASE, BackupRef
from tests.support import eventually

DONE = ("passed", "failed", "skipped")


def tick(scheduled_for: datetime) -> Envelope:
    """What the scheduler publishes each week."""
    return envelope_for(BackupsVerifyDue(scheduled_for=scheduled_for))


def week(n: int) -> datetime:
    """The n-th Sunday 05:00 tick of the tests' calendar."""
    return datetime(2026, 11, 1, 5, 0, tzinfo=UTC) + timedelta(weeks=n)


class DrillEvents:
    """DrillPassed and DrillFailed as published (a private queue on the test's bus)."""

    def __init__(self) -> None:
        self.seen: list[Envelope] = []

    async def start(self, bus) -> DrillEvents:
        async def keep(envelope: Envelope) -> None:
            if envelope.type in ("DrillPassed", "DrillFailed"):
                self.seen.append(envelope)

        await bus.subscribe_transient(["recovery.#"], keep)
        return self

    def of(self, drill_id: str) -> list[dict]:
        return [e.payload | {"type": e.type} for e in self.seen
                if e.payload["drill_id"] == drill_id]


async def drills(api: Api, **query) -> list[dict]:
    status, page, _ = await api.call("GET", "/api/v1/drills?" + "&".join(
        f"{k}={v}" for k, v in query.items()))
    assert status == 200, page
    return page["items"]


async def finished(api: Api, count: int, timeout: float = 30.0, **query) -> list[dict]:
    """The caller's drills once ``count`` of them exist and all have an outcome."""
    last: dict = {}

    async def done():
        items = last["items"] = await drills(api, **query)
        return items if len(items) == count and all(d["state"] in DONE for d in items) else None

    try:
        return await eventually(done, timeout=timeout, interval=0.05)
    except AssertionError:
        raise AssertionError(f"drills not done; last seen: {last.get('items')}") from None


async def corrupt_a_chunk(settings, key: bytes, backup: BackupRef) -> tuple[str, int]:
    """Flip one byte inside a stored chunk of the disk, in its pack object in the store (a
    folder, here); returns the pack's id and the chunk's offset in it."""
    bucket = open_bucket_store(settings, key)
    try:
        store = bucket.scoped(f"{backup.user_id}/{backup.host_id}/")
        repo = await Repository.open(store, PASSPHRASE)
        snapshot = await repo.load_snapshot(backup.snapshot_id)
        image = next(n for n in (await repo.load_tree(snapshot.tree)).nodes if n.type == IMAGE)
        stored = [ref for ref in image.content if ref.id is not None]
        location = repo.index.lookup(stored[len(stored) // 2].id)
        path = store.root.joinpath(*pack_key(location.pack_id).split("/"))
        data = bytearray(path.read_bytes())
        data[location.offset + 20] ^= 0x01
        path.chmod(0o644)
        path.write_bytes(bytes(data))
        return location.pack_id, location.offset
    finally:
        await bucket.close()
