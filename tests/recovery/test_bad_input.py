"""What goes wrong is refused or fails with a reason a customer can act on, and a failed
task leaves nothing behind: no scratch files, no image, no partial disk.

Refused at once (the API): someone else's backup, an unknown one, a file-only backup, no
passphrase where KMS can't open the backup, a target this server has not configured.
Failed by the worker: a wrong passphrase, a backup without a disk image after all, too
little disk space, a corrupted pack."""

from __future__ import annotations

import re

import aiohttp
import pytest

from shared.format import Repository, Source
from shared.format.repository import pack_key
from shared.format.snapshot import IMAGE
from shared.objectstore import open_bucket_store
from shared.settings import RecoverySettings
from tests.harness import Api, running_stack, settings_for
from tests.recovery.helpers import (
    PASSPHRASE,
    Observer,
    backup_of,
    image_backup,
    make_disk,
    user,
    wait_state,
)
from tests.support import eventually, files_under

SERVICES = ["auth", "recovery", "gateway"]


@pytest.fixture
def disk(tmp_path):
    return make_disk(tmp_path / "source", size_mib=16, data_mib=6)


@pytest.fixture
async def env(tmp_path, unique, request):
    recovery = {"min_free_bytes": 0, "progress_interval_seconds": 0.05}
    recovery.update(getattr(request, "param", {}))
    settings = settings_for("embedded", tmp_path, unique, recovery=RecoverySettings(**recovery))
    async with running_stack(settings, SERVICES) as (stack, base), \
            aiohttp.ClientSession() as session:
        api = Api(session, base)
        stack.user_id = await user(api, f"owner-{unique}")
        yield stack, api


def leftovers(stack) -> list[str]:
    return files_under(stack.settings.data_dir / "recovery")


async def request(api: Api, backup_id: str, **body):
    return await api.call("POST", "/api/v1/recoveries",
                          json={"backup_id": backup_id, "target": "local", **body})


async def fails_cleanly(stack, api: Api, backup_id: str, **body) -> str:
    """Request a recovery that must fail; its reason, once its leftovers are gone."""
    observer = await Observer().start(stack.bus)
    status, created, _ = await request(api, backup_id, **body)
    assert status == 201, created
    failed = await wait_state(api, created["id"], ["failed", "finishing"])
    assert failed["state"] == "failed"
    assert failed["finished_at"] is not None
    await eventually(lambda: leftovers(stack) == [])
    reported = await eventually(lambda: observer.of(created["id"], "RecoveryFailed"))
    assert [e["reason"] for e in reported] == [failed["failure_reason"]]
    assert observer.of(created["id"], "ImportCompleted") == []
    return failed["failure_reason"]


async def test_refused_requests(env, disk, unique):
    stack, api = env
    mine = await image_backup(stack, stack.user_id, disk)
    status, body, _ = await request(api, "no-such-backup", passphrase=PASSPHRASE)
    assert status == 404, body

    files = await backup_of(stack, stack.user_id, [Source(str(disk.parent))], is_image=False)
    status, body, _ = await request(api, files.backup_id, passphrase=PASSPHRASE)
    assert status == 422 and "only image backups" in body["detail"]

    status, body, _ = await request(api, mine.backup_id)
    assert status == 422 and "send the passphrase" in body["detail"]

    status, body, _ = await request(api, mine.backup_id, target="aws", passphrase=PASSPHRASE)
    assert status == 422 and "aws is not configured" in body["detail"]
    assert body["errors"][0]["location"] == ["body", "target"]

    status, body, _ = await request(api, mine.backup_id, instance_type="m6i.large",
                                    passphrase=PASSPHRASE)
    assert status == 422 and "aws recoveries only" in body["detail"]

    status, body, _ = await request(api, mine.backup_id, format="qcow2", passphrase=PASSPHRASE)
    assert status == 422 and body["errors"][0]["location"] == ["body", "format"]
    assert PASSPHRASE not in str(body)  # validation errors never echo the input

    await user(api, f"someone-else-{unique}")
    status, body, _ = await request(api, mine.backup_id, passphrase=PASSPHRASE)
    assert status == 404 and body["detail"] == "no such backup"
    assert leftovers(stack) == []


async def test_a_wrong_passphrase_fails_the_task(env, disk):
    stack, api = env
    backup = await image_backup(stack, stack.user_id, disk)
    reason = await fails_cleanly(stack, api, backup.backup_id, passphrase="not the passphrase")
    assert reason == "the passphrase is wrong: it opens none of this backup's keys"


async def test_a_backup_without_a_disk_image_fails_the_task(env, tmp_path):
    stack, api = env
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("a file, not a disk")
    # Announced as an image backup, but the snapshot holds only files.
    backup = await backup_of(stack, stack.user_id, [Source(str(folder))], is_image=True)
    reason = await fails_cleanly(stack, api, backup.backup_id, passphrase=PASSPHRASE)
    assert reason == "the backup holds no disk image: only image backups can become machines"


@pytest.mark.parametrize("env", [{"min_free_bytes": 1 << 50}], indirect=True)
async def test_too_little_disk_space_fails_before_downloading(env, disk):
    stack, api = env
    backup = await image_backup(stack, stack.user_id, disk)
    reason = await fails_cleanly(stack, api, backup.backup_id, passphrase=PASSPHRASE)
    assert re.fullmatch(r"not enough free disk space on the recovery worker: the image needs "
                        r"about [\d.]+ MiB and 1\.0 PiB must stay free, but only [\d.]+ [GT]iB is "
                        r"free; free space in the scratch folder or add a larger volume", reason)


async def test_a_corrupted_pack_fails_the_task_naming_it(env, disk):
    stack, api = env
    backup = await image_backup(stack, stack.user_id, disk)
    pack_id, offset = await corrupt_last_chunk(stack, backup)
    reason = await fails_cleanly(stack, api, backup.backup_id, passphrase=PASSPHRASE)
    assert reason.startswith("the backup is damaged and cannot become a disk: corrupt blob in "
                             f"pack {pack_id} at offset {offset}: authentication failed")


async def test_what_is_over_cannot_be_cancelled(env, disk):
    stack, api = env
    backup = await image_backup(stack, stack.user_id, disk)
    await fails_cleanly(stack, api, backup.backup_id, passphrase="wrong")
    status, page, _ = await api.call("GET", "/api/v1/recoveries")
    failed = page["items"][0]["id"]
    status, body, _ = await api.call("POST", f"/api/v1/recoveries/{failed}/cancel")
    assert status == 409 and "failed cannot be cancelled" in body["detail"]
    status, body, _ = await api.call("GET", f"/api/v1/recoveries/{failed}/image")
    assert status == 409 and "not ready" in body["detail"]


async def corrupt_last_chunk(stack, backup) -> tuple[str, int]:
    """Flip one byte inside the last stored chunk of the disk, in its pack on disk."""
    bucket = open_bucket_store(stack.settings, stack.key)
    store = bucket.scoped(f"{backup.user_id}/{backup.host_id}/")
    repo = await Repository.open(store, PASSPHRASE)
    snapshot = await repo.load_snapshot(backup.snapshot_id)
    image = next(n for n in (await repo.load_tree(snapshot.tree)).nodes if n.type == IMAGE)
    chunk = [ref for ref in image.content if ref.id is not None][-1]
    location = repo.index.lookup(chunk.id)
    path = store.root.joinpath(*pack_key(location.pack_id).split("/"))
    data = bytearray(path.read_bytes())
    data[location.offset + 40] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    await bucket.close()
    return location.pack_id, location.offset
