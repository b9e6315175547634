"""Forget by policy and garbage collection of real backups: what kept backups need stays (a
restore of a kept backup still works), the rest goes; and the agent's rule for packs that
are gone (docs/format.md)."""

from __future__ import annotations

import random

from tests.backup.support import (
    backup_folder,
    make_tree,
    pack_keys,
    restore,
)
from tests.format.conftest import describe
from tests.harness import Api
from tests.support import eventually


def rewrite(root, seed: int, names=("file 0 ü.bin", "sub/file 1 ü.bin", "sub/deeper/file 2 ü.bin")):
    rng = random.Random(seed)
    for name in names:
        (root / name).write_bytes(rng.randbytes(700_000))


async def test_forget_and_collect_keep_what_kept_backups_need(world, tmp_path):
    ida = await world.user("ida")
    agent = await world.agent(ida, "files")
    source = make_tree(tmp_path / "src", seed=5, files=3)
    original = {p: (source / p).read_bytes() for p in ("file 0 ü.bin", "sub/file 1 ü.bin")}
    b1, r1, packs1, _ = await backup_folder(agent, source)
    rewrite(source, 6)
    b2, r2, packs2, _ = await backup_folder(agent, source, kind="incremental")
    rewrite(source, 7)
    b3, r3, packs3, _ = await backup_folder(agent, source, kind="incremental")
    expected = describe(source)

    status, result, _ = await ida.call("POST", f"/api/v1/hosts/{b1.host_id}/forget", json={"keep_last": 1})
    assert status == 200, result
    assert result == {"kept": [b3.id], "forgotten": [b2.id, b1.id]}
    garbage = set(packs1 + packs2) - set(packs3)
    assert garbage

    # The collector runs once the forget committed.
    async def collected():
        keys = {k async for k in agent.list()}
        return f"snapshots/{r1.snapshot_id}" not in keys and not keys & set(pack_keys(garbage))

    await eventually(collected)
    keys = {k async for k in agent.list()}
    assert not keys & set(pack_keys(garbage))           # forgotten-only packs are gone
    assert set(pack_keys(packs3)) <= keys               # the kept backup's are all there
    assert f"snapshots/{r3.snapshot_id}" in keys
    assert not {f"snapshots/{r1.snapshot_id}", f"snapshots/{r2.snapshot_id}"} & keys
    catalog = [k async for k in world.backup.host_store(ida.user_id, b1.host_id).list("catalog/")]
    assert catalog == [f"catalog/{b3.id}.json"]
    await restore(agent, r3.snapshot_id, tmp_path / "out")
    assert describe(tmp_path / "out" / "src") == expected

    status, listed, _ = await ida.call("GET", f"/api/v1/backups?host={b1.host_id}")
    assert [(b["id"], b["status"]) for b in listed["items"]] == [
        (b3.id, "complete"), (b2.id, "forgotten"), (b1.id, "forgotten")]
    status, host, _ = await ida.call("GET", f"/api/v1/hosts/{b1.host_id}")
    stored = sum([size async for _, size in agent.list_with_sizes()])
    assert host["backups"] == 1 and stored <= host["storage_bytes"] < stored + 10_000  # + catalogue

    # The first version again. Index files still name its chunks, but their packs are gone:
    # the format leaves those entries out (docs/format.md §12), so they are stored again.
    for name, data in original.items():
        (source / name).write_bytes(data)
    b5, r5, packs5, repo = await backup_folder(agent, source)
    assert repo.gone_packs == garbage
    assert b5.status == "complete" and not set(packs5) & garbage
    # A client that deduplicated against a gone pack anyway is refused, the packs named.
    _, r6, packs6, _ = await backup_folder(agent, source, commit=False)
    stale = sorted(garbage)[:1]
    status, problem, _ = await Api(world.http, world.base).call(
        "POST", f"/api/v1/backups/{agent.backup_id}/commit", token=agent.agent_key,
        json={"snapshot_id": r6.snapshot_id, "packs": packs6 + stale, "is_image": False,
              "stats": {}})
    assert status == 409 and set(problem["missing"]) == set(pack_keys(stale))
    await agent.fail("stale index")
    await restore(agent, r5.snapshot_id, tmp_path / "again")
    assert describe(tmp_path / "again" / "src") == describe(source)
