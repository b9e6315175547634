"""End to end, in the embedded mode and on MariaDB + RabbitMQ: an image backup of a real ext4
disk, written with the format package into the backup bucket and announced with
BackupUploaded, becomes a local image through the gateway; downloaded with Range requests
(and resumed after a cut) it is byte for byte the source disk. Every state is passed in
order and progress only grows."""

from __future__ import annotations

import subprocess

import aiohttp
import pytest
from prometheus_client import REGISTRY

from shared.events import InstanceReady, InstanceTerminated, envelope_for
from shared.settings import RecoverySettings
from tests.harness import MODES, Api, running_stack, settings_for
from tests.recovery.helpers import (
    PASSPHRASE,
    Observer,
    download,
    image_backup,
    make_disk,
    sha256_of,
    user,
    wait_state,
)
from tests.support import eventually

SERVICES = ["auth", "recovery", "gateway"]
# Publish progress often enough that a small disk still shows a few steps.
FAST_PROGRESS = {"min_free_bytes": 0, "progress_interval_seconds": 0.05}


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


@pytest.fixture
def disk(tmp_path):
    return make_disk(tmp_path / "source")


def assert_orderly(events: list[dict]) -> None:
    """States in order, total progress never down, state progress never down in a state."""
    assert events[0]["type"] == "RecoveryRequested"
    progressed = [e for e in events if e["type"] == "RecoveryProgressed"]
    states = [e["state"] for e in progressed]
    assert [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s] == \
        ["downloading", "importing", "finishing", "complete"]
    totals = [e["total_progress"] for e in progressed]
    assert totals == sorted(totals) and totals[-1] == 100
    for state in set(states):
        inside = [e["state_progress"] for e in progressed if e["state"] == state]
        assert inside == sorted(inside), state
    downloading = [e for e in progressed if e["state"] == "downloading"]
    assert len(downloading) >= 3  # a live bar, not a jump from 0 to done


def failed_downloads() -> float:
    """How many image downloads the in-process services (this test's and earlier ones')
    have counted as failed (5xx)."""
    return sum(s.value for m in REGISTRY.collect() if m.name == "reclo_http_requests"
               for s in m.samples if s.name.endswith("_total") and s.labels["status"].startswith("5")
               and s.labels["route"].endswith("/image"))


async def test_a_local_recovery_gives_back_the_disk_byte_for_byte(mode, tmp_path, unique, disk):
    settings = settings_for(mode, tmp_path, unique, recovery=RecoverySettings(**FAST_PROGRESS))
    async with running_stack(settings, SERVICES) as (stack, base), \
            aiohttp.ClientSession() as session:
        observer = await Observer().start(stack.bus)
        api = Api(session, base)
        user_id = await user(api, f"owner-{unique}")
        backup_id = (await image_backup(stack, user_id, disk)).backup_id

        status, created, _ = await api.call("POST", "/api/v1/recoveries", json={
            "backup_id": backup_id, "target": "local", "passphrase": PASSPHRASE})
        assert status == 201, created
        assert created["state"] == "pending" and created["format"] == "raw"
        assert "passphrase" not in str(created)
        recovery_id = created["id"]

        ready = await wait_state(api, recovery_id, ["finishing", "failed"])
        assert ready["state"] == "finishing", ready["failure_reason"]
        size = disk.stat().st_size
        assert ready["image_sha256"] == sha256_of(disk) and ready["image_bytes"] == size
        assert ready["disk_bytes"] == size
        assert ready["image_url"] == f"/api/v1/recoveries/{recovery_id}/image"

        # The image is downloadable once finishing; a cut download resumes with Range.
        out = tmp_path / "downloaded.raw"
        failed_before = failed_downloads()
        first = await download(base, api.token, recovery_id, out, stop_after=5 << 20)
        assert first.status == 200 and first.headers["Accept-Ranges"] == "bytes"
        assert int(first.headers["Content-Length"]) == size
        etag = first.headers["ETag"]
        assert out.stat().st_size == 5 << 20
        rest = await download(base, api.token, recovery_id, out, headers={
            "Range": f"bytes={5 << 20}-", "If-Range": etag})
        assert rest.status == 206
        assert rest.headers["Content-Range"] == f"bytes {5 << 20}-{size - 1}/{size}"
        assert rest.headers["ETag"] == etag
        assert sha256_of(out) == sha256_of(disk)

        beyond = await download(base, api.token, recovery_id, tmp_path / "beyond", headers={
            "Range": f"bytes={size}-"})
        assert beyond.status == 416 and beyond.headers["Content-Range"] == f"bytes */{size}"
        stale = await download(base, api.token, recovery_id, tmp_path / "stale", headers={
            "Range": "bytes=100-", "If-Range": '"another-image"'})
        assert stale.status == 200 and (tmp_path / "stale").stat().st_size == size
        # The download cut short above was the client's doing: no service counted it failed.
        assert failed_downloads() == failed_before

        # Instances reports the machine up (published here: this test runs recovery alone).
        await stack.bus.publish(envelope_for(InstanceReady(
            instance_id="i-0123456789", user_id=user_id, recovery_id=recovery_id)))
        done = await wait_state(api, recovery_id, "complete")
        assert done["total_progress"] == 100 and done["instance_id"] == "i-0123456789"
        assert done["finished_at"] is not None

        await eventually(lambda: observer.of(recovery_id, "RecoveryCompleted"))
        events = observer.of(recovery_id)
        assert events[-1]["type"] == "RecoveryCompleted"
        assert_orderly(events)
        imported = observer.of(recovery_id, "ImportCompleted")
        assert len(imported) == 1 and imported[0]["provider"] == "local"
        assert imported[0]["image_ref"].startswith("file:///")

        status, page, _ = await api.call("GET", "/api/v1/recoveries")
        assert status == 200 and [r["id"] for r in page["items"]] == [recovery_id]
        # Only the image is left: the scratch folder is empty.
        scratch = settings.data_dir / "recovery" / "scratch"
        assert not scratch.exists() or list(scratch.iterdir()) == []

        # Nobody else sees it, its image or its cancel button.
        owner_token = api.token
        await user(api, f"other-{unique}")
        for method, path in (("GET", ""), ("GET", "/image"), ("POST", "/cancel")):
            status, body, _ = await api.call(method, f"/api/v1/recoveries/{recovery_id}{path}")
            assert status == 404, body

        # The machine terminated (told twice, as a redelivery would): its image goes with it.
        api.token = owner_token
        images = settings.data_dir / "recovery" / "images"
        assert len(list(images.iterdir())) == 1
        for _ in range(2):
            await stack.bus.publish(envelope_for(InstanceTerminated(
                instance_id="i-0123456789", user_id=user_id)))

        async def image_gone():
            status, body, _ = await api.call("GET", f"/api/v1/recoveries/{recovery_id}")
            return body if body["image_url"] is None else None

        gone = await eventually(image_gone)
        assert gone["state"] == "complete" and gone["image_ref"] is None
        assert list(images.iterdir()) == []
        status, body, _ = await api.call("GET", f"/api/v1/recoveries/{recovery_id}/image")
        assert status == 410 and "terminated" in body["detail"], body


@pytest.mark.parametrize("disk_format,qemu_name", [("vmdk", "vmdk"), ("vhd", "vpc")])
async def test_a_converted_local_image_holds_the_same_disk(disk_format, qemu_name, tmp_path,
                                                           unique, disk):
    settings = settings_for("embedded", tmp_path, unique,
                            recovery=RecoverySettings(**FAST_PROGRESS))
    async with running_stack(settings, SERVICES) as (stack, base), \
            aiohttp.ClientSession() as session:
        api = Api(session, base)
        user_id = await user(api, f"owner-{unique}")
        backup_id = (await image_backup(stack, user_id, disk)).backup_id
        status, created, _ = await api.call("POST", "/api/v1/recoveries", json={
            "backup_id": backup_id, "target": "local", "format": disk_format,
            "passphrase": PASSPHRASE})
        assert status == 201, created
        ready = await wait_state(api, created["id"], ["finishing", "failed"])
        assert ready["state"] == "finishing", ready["failure_reason"]
        image = tmp_path / f"image.{disk_format}"
        response = await download(base, api.token, created["id"], image)
        assert response.status == 200
        assert f".{disk_format}\"" in response.headers["Content-Disposition"]
        assert sha256_of(image) == ready["image_sha256"]
        info = subprocess.run(["qemu-img", "info", "--output=json", "-f", qemu_name, str(image)],
                              capture_output=True, text=True, check=True).stdout
        assert f'"virtual-size": {disk.stat().st_size}' in info
        back = tmp_path / "back.raw"
        subprocess.run(["qemu-img", "convert", "-f", qemu_name, "-O", "raw", str(image),
                        str(back)], check=True)
        assert sha256_of(back) == sha256_of(disk)
