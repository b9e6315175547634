"""Bad input to the backup routes gets a clear 4xx problem+json, never a 500."""

from __future__ import annotations

from tests.harness import Api

PROBLEM = "application/problem+json"
HEX = "a" * 64
START = {"kind": "full", "sources": [{"path": "/srv", "type": "folder"}]}


def check(result, status, where=""):
    code, body, kind = result
    assert code == status, (where, body)
    assert kind.startswith(PROBLEM), (where, kind)
    assert body["status"] == status and body["title"] and "Traceback" not in str(body)
    return body


async def test_bad_input_is_a_4xx_problem(world):
    user = await world.user("nina")
    agent = Api(world.http, world.base)
    agent.token = await world.agent_key(user, "host")
    status, session, _ = await agent.call("POST", "/api/v1/backups", json=START)
    sid = session["id"]

    cases = [
        # (api, method, path, json body or raw bytes, expected status)
        (agent, "POST", "/api/v1/backups", b"{not json", 400),
        (agent, "POST", "/api/v1/backups", b"", 400),
        (agent, "POST", "/api/v1/backups", {"kind": "weekly", "sources": START["sources"]}, 422),
        (agent, "POST", "/api/v1/backups", {"kind": "full", "sources": []}, 422),
        (agent, "POST", "/api/v1/backups", {"kind": "full", "sources": [{"path": "/", "type": "disk"}]}, 422),
        (agent, "POST", "/api/v1/backups", {**START, "parent_snapshot_id": "x" * 65}, 422),
        (agent, "POST", f"/api/v1/backups/{sid}/upload-urls", {"objects": []}, 422),
        (agent, "POST", f"/api/v1/backups/{sid}/upload-urls",
         {"objects": [{"key": "config", "size": 1}] * 1001}, 422),
        (agent, "POST", f"/api/v1/backups/{sid}/upload-urls", {"objects": [{"key": "config", "size": -1}]}, 422),
        (agent, "POST", f"/api/v1/backups/{sid}/upload-urls",
         {"objects": [{"key": "config", "size": 1}, {"key": "config", "size": 2}]}, 422),
        (agent, "POST", f"/api/v1/backups/{sid}/upload-urls",
         {"objects": [{"key": "config", "size": 1, "packs": [HEX]}]}, 422),
        (agent, "POST", f"/api/v1/backups/{sid}/upload-urls",
         {"objects": [{"key": f"index/{HEX}", "size": 1, "packs": ["not-a-pack"]}]}, 422),
        (agent, "POST", "/api/v1/backups/nope/upload-urls", {"objects": [{"key": "config", "size": 1}]}, 404),
        (agent, "POST", f"/api/v1/backups/{sid}/commit", {"snapshot_id": "xyz", "is_image": False, "stats": {}}, 422),
        (agent, "POST", f"/api/v1/backups/{sid}/commit",
         {"snapshot_id": HEX, "is_image": False, "stats": {"files": -1}}, 422),
        (agent, "POST", f"/api/v1/backups/{sid}/commit", {"snapshot_id": HEX, "packs": ["x"], "is_image": False,
                                                          "stats": {}}, 409),
        (agent, "POST", f"/api/v1/backups/{sid}/fail", {"reason": ""}, 422),
        (agent, "GET", "/api/v1/repository/objects?limit=0", None, 422),
        (agent, "GET", "/api/v1/repository/objects?limit=5000", None, 422),
        (agent, "GET", "/api/v1/repository/objects?cursor=%%%", None, 400),
        (agent, "GET", "/api/v1/repository/objects?cursor=Li4vLi4v", None, 400),  # "../../"
        (agent, "POST", "/api/v1/repository/download-urls", {"keys": []}, 422),
        (agent, "POST", "/api/v1/repository/forget", {}, 422),
        (agent, "POST", "/api/v1/repository/forget", {"keep_daily": -1}, 422),
        (user, "GET", "/api/v1/hosts/nope", None, 404),
        (user, "GET", "/api/v1/hosts?limit=0", None, 422),
        (user, "GET", "/api/v1/backups/nope", None, 404),
        (user, "GET", "/api/v1/backups?limit=1000", None, 422),
        (user, "GET", "/api/v1/backups?cursor=garbage", None, 400),
        (user, "PUT", f"/api/v1/hosts/{session['host_id']}/retention", {"keep_last": 0}, 422),
        (user, "POST", f"/api/v1/hosts/{session['host_id']}/forget", {"keep_weekly": "many"}, 422),
        (user, "DELETE", f"/api/v1/backups/{sid}", None, 405),
    ]
    for api, method, path, body, expected in cases:
        kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
        check(await api.call(method, path, **kwargs), expected, f"{method} {path} {str(body)[:80]}")
