"""The REST surface of instances, through the gateway: only the owner sees and touches a
machine, impossible transitions are 409, bad input a 4xx problem+json; on aws the machine
in EC2 (moto) follows."""

import aiohttp

from services.instances import lifecycle
from shared.events import ImportCompleted
from tests.harness import Api, running_stack, settings_for
from tests.instances.helpers import (
    SERVICES,
    emitted,
    forget_listener,
    listen,
    of_type,
    publish,
    sign_up,
)
from tests.support import eventually

PROBLEM = "application/problem+json"


def problem(result, status):
    code, body, kind = result
    assert code == status, body
    assert kind.startswith(PROBLEM), kind
    assert body["status"] == status and body["title"]
    assert "Traceback" not in str(body)
    return body


async def _launch(stack, received, user: str, recovery: str, provider="local",
                  image="file:///images/disk.raw") -> str:
    await publish(stack, ImportCompleted(recovery_id=recovery, user_id=user,
                                         provider=provider, image_ref=image))
    (ready,) = await eventually(lambda: of_type(received, "InstanceReady", recovery_id=recovery))
    return ready["instance_id"]


async def test_owner_only_transitions_and_bad_input(mode, tmp_path, unique):
    settings = settings_for(mode, tmp_path, unique)
    try:
        async with running_stack(settings, SERVICES) as (stack, base), \
                aiohttp.ClientSession() as http:
            ann, bob = Api(http, base), Api(http, base)
            ann_id = await sign_up(ann, f"ann{unique}")
            await sign_up(bob, f"bob{unique}")
            received = await listen(stack)
            first = await _launch(stack, received, ann_id, f"r1-{unique}")
            second = await _launch(stack, received, ann_id, f"r2-{unique}")
            url = f"/api/v1/instances/{first}"

            # Someone else's machine does not exist for them.
            status, page, _ = await bob.call("GET", "/api/v1/instances")
            assert status == 200 and page == {"items": [], "next_cursor": None}
            problem(await bob.call("GET", url), 404)
            for action in ("start", "stop", "terminate"):
                problem(await bob.call("POST", f"{url}/{action}"), 404)
            problem(await bob.call("POST", f"{url}/vpn-peers",
                                   json={"public_key": "x" * 44}), 422)
            problem(await bob.call("GET", f"{url}/vpn-peers"), 404)
            problem(await bob.call("DELETE", f"{url}/vpn-peers/{'0' * 32}"), 404)
            problem(await ann.call("GET", "/api/v1/instances/no-such-id"), 404)
            problem(await ann.call("GET", url, token=""), 401)

            # Pagination and the filter by recovery.
            status, page, _ = await ann.call("GET", "/api/v1/instances?limit=1")
            assert [i["id"] for i in page["items"]] == [first] and page["next_cursor"]
            status, page, _ = await ann.call(
                "GET", f"/api/v1/instances?limit=1&cursor={page['next_cursor']}")
            assert [i["id"] for i in page["items"]] == [second] and page["next_cursor"] is None
            status, page, _ = await ann.call("GET", f"/api/v1/instances?recovery_id=r2-{unique}")
            assert [i["id"] for i in page["items"]] == [second]

            # Transitions.
            assert "running" in problem(await ann.call("POST", f"{url}/start"), 409)["detail"]
            status, body, _ = await ann.call("POST", f"{url}/stop")
            assert status == 200 and body["state"] == "stopped" and body["stopped_at"]
            problem(await ann.call("POST", f"{url}/stop"), 409)
            # The sweep of machines up or stopped leaves local ones as recorded (the
            # local provider cannot tell): stopped stays stopped.
            await lifecycle.watch_live(stack.runtimes["instances"].context)
            status, body, _ = await ann.call("GET", url)
            assert body["state"] == "stopped"
            status, body, _ = await ann.call("POST", f"{url}/start")
            assert status == 200 and body["state"] == "running" and body["stopped_at"] is None
            status, body, _ = await ann.call("POST", f"{url}/terminate")
            assert status == 200 and body["state"] == "terminated" and body["terminated_at"]
            assert body["vpn_state"] is None
            for action in ("start", "stop", "terminate"):
                detail = problem(await ann.call("POST", f"{url}/{action}"), 409)["detail"]
                assert "terminated" in detail
            problem(await ann.call("POST", f"{url}/vpn-peers",
                                   json={"public_key": "x" * 44}), 422)
            events = [(t, p["instance_id"]) for t, p in await emitted(stack)
                      if t in ("InstanceStopped", "InstanceTerminated")]
            assert events == [("InstanceStopped", first), ("InstanceTerminated", first)]
            await eventually(lambda: of_type(received, "InstanceTerminated", instance_id=first))

            # Bad input: a clear 4xx, never the input echoed.
            other = f"/api/v1/instances/{second}/vpn-peers"
            problem(await ann.call("POST", other, data=b"{not json"), 400)
            problem(await ann.call("POST", other, data=b""), 400)
            body = problem(await ann.call("POST", other, json={"public_key": "secret!" * 6}),
                           422)
            assert body["errors"][0]["location"] == ["body", "public_key"]
            assert "secret!" not in str(body)
            problem(await ann.call("POST", other, json={"public_key": "A" * 43 + "=",
                                                        "name": "a\nb"}), 422)
            problem(await ann.call("POST", other, json={"name": "laptop"}), 422)
            problem(await ann.call("GET", "/api/v1/instances?limit=0"), 422)
            problem(await ann.call("GET", "/api/v1/instances?limit=abc"), 422)
            problem(await ann.call("GET", "/api/v1/instances?cursor=!!"), 400)
    finally:
        await forget_listener(settings)


async def test_aws_start_stop_terminate_follow_in_ec2(tmp_path, unique, network):
    settings = settings_for("embedded", tmp_path, unique, instances=network.settings())
    ami, snapshot = network.image("machine")
    async with running_stack(settings, SERVICES) as (stack, base), \
            aiohttp.ClientSession() as http:
        api = Api(http, base)
        user = await sign_up(api, f"ann{unique}")
        received = await listen(stack)
        instance = await _launch(stack, received, user, f"r-{unique}", "aws", ami)
        url = f"/api/v1/instances/{instance}"
        status, body, _ = await api.call("GET", url)
        (machine,) = network.instances(**{"reclo:role": "machine"})
        assert body["state"] == "running" and body["address"] == machine["PrivateIpAddress"]
        assert body["instance_type"] == "t3.medium"

        status, body, _ = await api.call("POST", f"{url}/stop")
        assert status == 200 and body["state"] == "stopped"
        ec2_state = network.instance(machine["InstanceId"])["State"]["Name"]
        assert ec2_state in ("stopping", "stopped")

        status, body, _ = await api.call("POST", f"{url}/start")
        assert status == 200 and body["state"] in ("pending", "running")
        await eventually(lambda: network.instance(machine["InstanceId"])["State"]["Name"]
                         == "running")

        async def running():
            return (await api.call("GET", url))[1]["state"] == "running"

        await eventually(running)
        # Started again: no second InstanceReady (it announces the first launch only).
        assert len(of_type(received, "InstanceReady")) == 1

        (gw,) = network.instances(**{"reclo:role": "vpn-gateway"})
        status, body, _ = await api.call("POST", f"{url}/terminate")
        assert status == 200 and body["state"] == "terminated"
        assert network.instance(machine["InstanceId"])["State"]["Name"] in (
            "shutting-down", "terminated")
        # Its image went with it (AMI and snapshot), and so did the user's last gateway.
        assert network.ec2.describe_images(Filters=[
            {"Name": "image-id", "Values": [ami]}])["Images"] == []
        snapshots = network.ec2.describe_snapshots(Filters=[
            {"Name": "snapshot-id", "Values": [snapshot]}])["Snapshots"]
        assert snapshots == []
        assert network.instance(gw["InstanceId"])["State"]["Name"] in (
            "shutting-down", "terminated")
