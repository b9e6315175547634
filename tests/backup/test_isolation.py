"""An agent reaches only its own user's and host's repository and sessions; a user only
their own hosts and backups. Two users, three hosts, one host name used by both."""

from __future__ import annotations

from tests.backup.support import backup_folder, make_tree
from tests.harness import Api


def as_agent(world, key: str) -> Api:
    api = Api(world.http, world.base)
    api.token = key
    return api


async def test_agents_and_users_stay_in_their_own_prefix(world, tmp_path):
    ann, ben = await world.user("ann"), await world.user("ben")
    a1 = await world.agent(ann, "alpha")      # ann's host alpha
    a2 = await world.agent(ann, "beta")       # ann's other host
    b1 = await world.agent(ben, "alpha")      # ben's host with the same name
    backup, result, packs, _ = await backup_folder(a1, make_tree(tmp_path / "a", seed=3, files=3))

    # Other agents list nothing of it, and its keys don't resolve for them.
    own = [k async for k in a1.list()]
    assert "config" in own and any(k.startswith("data/") for k in own)
    for other in (a2, b1):
        assert [k async for k in other.list()] == []
        assert not await other.exists("config")
        status, urls, _ = await as_agent(world, other.agent_key).call(
            "POST", "/api/v1/repository/download-urls", json={"keys": own[:50]})
        assert status == 200 and urls["urls"] == [] and sorted(urls["missing"]) == sorted(own[:50])

    # Nor can they touch its session or see its backup.
    for other in (a2, b1):
        api = as_agent(world, other.agent_key)
        for path, body in ((f"/api/v1/backups/{backup.id}/upload-urls",
                            {"objects": [{"key": "config", "size": 1}]}),
                           (f"/api/v1/backups/{backup.id}/commit",
                            {"snapshot_id": "a" * 64, "packs": [], "is_image": False, "stats": {}}),
                           (f"/api/v1/backups/{backup.id}/fail", {"reason": "x"})):
            status, problem, _ = await api.call("POST", path, json=body)
            assert status == 404, (path, problem)
        status, _, _ = await api.call("GET", f"/api/v1/backups/{backup.id}")
        assert status == 404
        status, listed, _ = await api.call("GET", "/api/v1/backups")
        assert status == 200 and listed["items"] == []
        status, _, _ = await api.call("GET", f"/api/v1/backups?host={backup.host_id}")
        assert status == 403

    # Ben sees none of Ann's hosts or backups.
    assert (await ben.call("GET", f"/api/v1/hosts/{backup.host_id}"))[0] == 404
    assert (await ben.call("GET", f"/api/v1/backups/{backup.id}"))[0] == 404
    status, listed, _ = await ben.call("GET", f"/api/v1/backups?host={backup.host_id}")
    assert status == 200 and listed["items"] == []
    assert (await ben.call("POST", f"/api/v1/hosts/{backup.host_id}/forget",
                           json={"keep_last": 1}))[0] == 404
    status, hosts, _ = await ann.call("GET", "/api/v1/hosts")
    assert [h["name"] for h in hosts["items"]] == ["alpha"]  # beta has no session yet

    # In the bucket, each repository is under its own user's and host's prefix.
    status, ann_hosts, _ = await ann.call("GET", "/api/v1/hosts")
    prefix = f"{ann_hosts['items'][0]['id']}/"
    keys = [k async for k in world.backup.store.list()]
    assert keys and all(k.split("/")[1] + "/" == prefix for k in keys)


async def test_traversal_in_upload_keys_and_listing_prefixes_is_refused(world):
    fay = await world.user("fay")
    api = as_agent(world, await world.agent_key(fay, "host"))
    status, session, _ = await api.call("POST", "/api/v1/backups", json={
        "kind": "full", "sources": [{"path": "/", "type": "folder"}]})
    for key in ("../x/config", "data/ab/../../config", "catalog/x.json", "CONFIG", "data/ab/ab"):
        status, problem, _ = await api.call("POST", f"/api/v1/backups/{session['id']}/upload-urls",
                                            json={"objects": [{"key": key, "size": 1}]})
        assert status == 422, key
    for prefix in ("..", "../", "%2e%2e/", "a.b"):
        status, problem, _ = await api.call("GET", f"/api/v1/repository/objects?prefix={prefix}")
        assert status == 422, prefix
    for key in ("../../other/host/config", "/abs/config", "data/ab/" + "a" * 63 + "/../config"):
        status, problem, kind = await api.call("POST", "/api/v1/repository/download-urls",
                                               json={"keys": [key]})
        assert status == 422 and kind.startswith("application/problem+json"), key


async def test_callers_use_only_their_own_kind_of_routes(world):
    gus = await world.user("gus")
    agent = as_agent(world, await world.agent_key(gus, "host"))
    assert (await agent.call("GET", "/api/v1/hosts"))[0] == 403
    assert (await gus.call("POST", "/api/v1/backups", json={
        "kind": "full", "sources": [{"path": "/", "type": "folder"}]}))[0] == 403
    assert (await gus.call("GET", "/api/v1/repository/objects"))[0] == 403
    anonymous = Api(world.http, world.base)
    assert (await anonymous.call("GET", "/api/v1/backups"))[0] == 401
    assert (await anonymous.call("GET", "/api/v1/repository/objects"))[0] == 401
