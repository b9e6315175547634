"""The image download's resumption rules: it appends only to the same image (If-Range on
its ETag), starts over when the image is another, finishes a part that is already whole,
and never leaves a corrupt file under the final name."""

import hashlib
import json

from clients.recovery import exits
from tests.recovery_client.conftest import api_for
from tests.recovery_client.support import image_backup, known_to_recovery


async def test_resuming_rules(local_stack, recover, http, unique, tmp_path):
    stack = local_stack
    api = api_for(http, stack)
    username = f"dl-{unique}"
    await api.register_and_login(username)
    _, disk = await image_backup(tmp_path, stack.base_url, username)
    await recover("login", "--server", stack.base_url, "--username", username)
    backup = (await recover("backups", "--json")).json()[0]
    await known_to_recovery(stack, backup["id"])
    # On a terminal's terms: bars and stage lines on stderr, the outcome in words on stdout.
    started = await recover("start", backup["id"], "--target", "local", "--wait")
    assert "State: complete" in started.stdout and "SHA-256" in started.stdout
    assert "✓ reading the backup, building the disk" in started.stderr
    recovery = (await recover("recoveries", "--json")).json()[-1]
    waited = (await recover("status", recovery["id"], "--wait", "--json")).lines()
    assert len(waited) == 1 and waited[0]["state"] == "complete"
    image = disk.read_bytes()  # a raw image is the disk itself
    assert recovery["image_sha256"] == hashlib.sha256(image).hexdigest()
    async with http.get(f"{stack.base_url}/api/v1/recoveries/{recovery['id']}/image",
                        headers={"Authorization": f"Bearer {api.token}",
                                 "Range": "bytes=0-0"}) as response:
        assert response.status == 206
        etag = response.headers["ETag"]

    def part_of(name: str, data: bytes, tag: str | None) -> tuple:
        dest = tmp_path / name
        part = tmp_path / f"{name}.part"
        part.write_bytes(data)
        (tmp_path / f"{name}.part.json").write_text(json.dumps({"etag": tag}))
        return dest, part

    async def download(dest, expect=0):
        return await recover("download", recovery["id"], str(dest), "--json", expect=expect)

    # The same image: only the rest is asked for.
    dest, part = part_of("same.img", image[:3_000_000], etag)
    result = (await download(dest)).json()
    assert result["resumed_from"] == 3_000_000 and dest.read_bytes() == image
    assert not part.exists() and not (tmp_path / "same.img.part.json").exists()

    # Another image under that name (the ETag no longer matches): it starts over.
    dest, _ = part_of("other.img", b"\xff" * 1_000_000, '"not-this-image"')
    result = (await download(dest)).json()
    assert result["resumed_from"] == 0 and dest.read_bytes() == image

    # No ETag remembered: nothing says the bytes belong to this image, so it starts over.
    dest, _ = part_of("untagged.img", image[:1000], None)
    assert (await download(dest)).json()["resumed_from"] == 0 and dest.read_bytes() == image

    # A part that is already whole is only checked.
    dest, _ = part_of("whole.img", image, etag)
    result = (await download(dest)).json()
    assert result["resumed_from"] == len(image) and dest.read_bytes() == image

    # A part longer than the image is no piece of it.
    dest, _ = part_of("long.img", image + b"tail", etag)
    assert (await download(dest)).json()["resumed_from"] == 0 and dest.read_bytes() == image

    # Damaged bytes under the right ETag: caught by the SHA-256, removed, never renamed.
    damaged = bytearray(image[:2_000_000])
    damaged[1000] ^= 0xFF
    dest, part = part_of("damaged.img", bytes(damaged), etag)
    result = await download(dest, expect=exits.FAILED)
    assert "corrupt" in result.stderr and not dest.exists() and not part.exists()
    assert (await download(dest)).json()["resumed_from"] == 0 and dest.read_bytes() == image

    # A folder as DEST: the file gets a name of its own inside it.
    folder = tmp_path / "into"
    folder.mkdir()
    result = (await download(folder)).json()
    assert result["path"].startswith(str(folder)) and result["path"].endswith(".img")
