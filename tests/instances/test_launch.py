"""ImportCompleted on the bus becomes a machine: recorded, launched (local, or EC2 in
moto), answered with InstanceReady or InstanceLaunchFailed on the bus; repeated events
launch nothing twice."""

import base64
from ipaddress import IPv4Network

import aiohttp

from services.instances import domain, gateway, lifecycle
from services.instances.compute import LaunchSpec
from services.instances.environments import as_environment, current
from shared.events import ImportCompleted
from tests.harness import Api, running_stack, settings_for
from tests.instances.helpers import (
    RECOVERY_CIDR,
    SERVICES,
    emitted,
    forget_listener,
    groups_of,
    handled,
    listen,
    of_type,
    publish,
    rows,
    sign_up,
    tags_of,
)
from tests.support import eventually


async def test_a_local_import_becomes_a_running_instance_once(mode, tmp_path, unique):
    settings = settings_for(mode, tmp_path, unique)
    try:
        async with running_stack(settings, SERVICES) as (stack, base), \
                aiohttp.ClientSession() as http:
            api = Api(http, base)
            user = await sign_up(api, f"ann{unique}")
            received = await listen(stack)
            event = ImportCompleted(recovery_id=f"rec-{unique}", user_id=user,
                                    provider="local", image_ref=f"file:///images/{unique}.raw")
            first = await publish(stack, event)
            await eventually(lambda: of_type(received, "InstanceReady",
                                             recovery_id=event.recovery_id))
            (ready,) = of_type(received, "InstanceReady")
            assert ready["user_id"] == user and ready["address"] is None

            status, page, _ = await api.call("GET", "/api/v1/instances")
            assert status == 200
            (item,) = page["items"]
            assert item["id"] == ready["instance_id"]
            assert (item["state"], item["provider"], item["recovery_id"]) == (
                "running", "local", event.recovery_id)
            assert item["vpn_state"] == "ready"
            # QEMU is off unless asked for: no machine disk was made, no process started.
            assert settings.instances.qemu_enabled is False
            assert not (tmp_path / "data" / "instances" / "machines").exists()

            # The same message again is skipped by the inbox; the same import announced
            # anew (another event id) finds the machine and answers again.
            await stack.bus.publish(first)
            again = await publish(stack, event)
            await eventually(lambda: len(of_type(received, "InstanceReady")) == 2)
            assert await handled(stack, again)
            assert len(await rows(stack)) == 1
            assert [t for t, _ in await emitted(stack)] == ["InstanceReady", "InstanceReady"]
            assert {p["instance_id"] for p in of_type(received, "InstanceReady")} == {item["id"]}
    finally:
        await forget_listener(settings)


async def test_an_unknown_provider_fails_the_launch(tmp_path, unique):
    settings = settings_for("embedded", tmp_path, unique)
    async with running_stack(settings, SERVICES) as (stack, base), \
            aiohttp.ClientSession() as http:
        api = Api(http, base)
        user = await sign_up(api, f"ann{unique}")
        received = await listen(stack)
        await publish(stack, ImportCompleted(recovery_id="r1", user_id=user, provider="gcp",
                                             image_ref="x"))
        (failed,) = await eventually(lambda: of_type(received, "InstanceLaunchFailed"))
        assert failed == {"recovery_id": "r1", "user_id": user,
                          "reason": "unknown compute provider 'gcp'"}
        (row,) = await rows(stack)
        assert row.state == "failed" and row.failure_reason == failed["reason"]
        status, page, _ = await api.call("GET", "/api/v1/instances")
        (item,) = page["items"]
        assert (item["state"], item["provider"], item["failure_reason"], item["vpn_state"]) == (
            "failed", "gcp", failed["reason"], None)


async def test_local_with_qemu_enabled_but_missing_fails_clearly(tmp_path, unique):
    """QEMU is off by default (the test above ran no process); switched on where it isn't
    installed, the launch fails with the reason rather than pretending."""
    settings = settings_for("embedded", tmp_path, unique)
    settings.instances.qemu_enabled = True
    settings.instances.qemu_binary = str(tmp_path / "no-such-qemu")
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(1024 * 1024))
    async with running_stack(settings, ["instances"]) as (stack, _):
        received = await listen(stack)
        await publish(stack, ImportCompleted(recovery_id="r1", user_id="u1", provider="local",
                                             image_ref=image.as_uri()))
        (failed,) = await eventually(lambda: of_type(received, "InstanceLaunchFailed"))
        assert "no-such-qemu is not installed" in failed["reason"]
        assert not list((tmp_path / "data" / "instances" / "machines").glob("*.qcow2"))


async def test_aws_import_launches_behind_the_vpn(mode, tmp_path, unique, network):
    settings = settings_for(mode, tmp_path, unique, instances=network.settings())
    ami, _ = network.image("machine")
    try:
        async with running_stack(settings, ["instances"]) as (stack, _):
            received = await listen(stack)
            event = ImportCompleted(recovery_id=f"rec-{unique}", user_id=f"user{unique}",
                                    provider="aws", image_ref=ami)
            first = await publish(stack, event)
            (ready,) = await eventually(lambda: of_type(received, "InstanceReady"))

            (machine,) = network.instances(**{"reclo:role": "machine"})
            (gw,) = network.instances(**{"reclo:role": "vpn-gateway"})
            assert ready["address"] == machine["PrivateIpAddress"]
            assert machine["ImageId"] == ami and machine["SubnetId"] == network.subnet_id
            assert machine.get("PublicIpAddress") is None
            assert tags_of(machine) == {"Name": f"reclo-recovery-{event.recovery_id}",
                                        "reclo:user": event.user_id,
                                        "reclo:recovery": event.recovery_id,
                                        "reclo:role": "machine"}
            gateway_group, machine_group = (network.group(n)
                                            for n in domain.group_names(event.user_id))
            # (A group filters traffic on the network interface; moto shows it only there.)
            assert groups_of(machine) == [machine_group["GroupId"]]
            assert groups_of(gw) == [gateway_group["GroupId"]]

            # The machines admit only their user's gateway; the gateway only WireGuard.
            (rule,) = machine_group["IpPermissions"]
            assert rule["IpProtocol"] == "-1" and not rule.get("IpRanges")
            assert [p["GroupId"] for p in rule["UserIdGroupPairs"]] == [gateway_group["GroupId"]]
            (rule,) = gateway_group["IpPermissions"]
            assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("udp", 51820, 51820)
            assert [r["CidrIp"] for r in rule["IpRanges"]] == ["0.0.0.0/0"]

            assert gw.get("PublicIpAddress")
            assert gw["MetadataOptions"]["InstanceMetadataTags"] == "enabled"
            assert gw["ImageId"] == network.gateway_image
            raw = network.ec2.describe_instance_attribute(
                InstanceId=gw["InstanceId"], Attribute="userData")["UserData"]["Value"]
            user_data = base64.b64decode(raw).decode()
            assert user_data == gateway.user_data(settings.instances.vpn_subnet, 51820,
                                                  [IPv4Network(RECOVERY_CIDR)])
            assert "PrivateKey" not in user_data

            # Redelivered, or announced again: still one machine and one gateway.
            await stack.bus.publish(first)
            again = await publish(stack, event)
            await eventually(lambda: handled(stack, again))
            assert len(network.instances(**{"reclo:recovery": event.recovery_id})) == 1
            assert len(network.instances(**{"reclo:role": "vpn-gateway"})) == 1
            assert len(await rows(stack)) == 1

            # A launch that crashed before its row was saved is retried by the bus: EC2's
            # ClientToken (and ReClo's tags, which moto honours) give the first machine.
            service = stack.runtimes["instances"].context
            (row,) = await rows(stack)
            async with service.db.sessions() as session:
                env = await current(session, event.user_id, "aws")
            provider = service.providers["aws"]
            spec = LaunchSpec(instance_id=row.id, recovery_id=event.recovery_id,
                              user_id=event.user_id, image_ref=ami, instance_type=None)
            instance_id, _ = await provider.launch(spec, as_environment(env))
            assert instance_id == machine["InstanceId"] == row.provider_instance_id
            assert len(network.instances(**{"reclo:role": "machine"})) == 1

            # A rule added by hand to a ReClo group is taken away by the next launch.
            network.ec2.authorize_security_group_ingress(
                GroupId=machine_group["GroupId"], IpPermissions=[{
                    "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                    "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
            ami2, _ = network.image("second")
            await publish(stack, ImportCompleted(recovery_id=f"rec2-{unique}",
                                                 user_id=event.user_id, provider="aws",
                                                 image_ref=ami2))
            await eventually(lambda: len(of_type(received, "InstanceReady")) == 3)
            (rule,) = network.group(machine_group["GroupName"])["IpPermissions"]
            assert rule["IpProtocol"] == "-1"
            assert len(network.instances(**{"reclo:role": "vpn-gateway"})) == 1
    finally:
        await forget_listener(settings)


async def test_aws_refusal_is_the_launch_failure_reason(tmp_path, unique, network):
    settings = settings_for("embedded", tmp_path, unique,
                            instances=network.settings(subnet_id="subnet-0000000000000000"))
    ami, _ = network.image("machine")
    async with running_stack(settings, ["instances"]) as (stack, _):
        received = await listen(stack)
        await publish(stack, ImportCompleted(recovery_id=f"rec-{unique}", user_id=f"u{unique}",
                                             provider="aws", image_ref=ami))
        (failed,) = await eventually(lambda: of_type(received, "InstanceLaunchFailed"))
        assert failed["reason"].startswith("InvalidSubnetID.NotFound:")
        assert "subnet-0000000000000000" in failed["reason"]
        assert network.instances() == []
        # The recovery failed: its AMI is not left behind.
        assert network.ec2.describe_images(Filters=[
            {"Name": "image-id", "Values": [ami]}])["Images"] == []


async def test_a_machine_that_dies_before_running_fails_the_launch(tmp_path, unique, network):
    """The sweep (run by hand here: its own loop is slowed down) finds a pending machine
    gone: the launch fails with the reason, and its AMI is released."""
    settings = settings_for("embedded", tmp_path, unique,
                            instances=network.settings(poll_seconds=3600))
    ami, snapshot = network.image("machine")
    async with running_stack(settings, ["instances"]) as (stack, _):
        received = await listen(stack)
        await publish(stack, ImportCompleted(recovery_id=f"rec-{unique}", user_id=f"u{unique}",
                                             provider="aws", image_ref=ami))
        await eventually(lambda: rows_in_state(stack, "pending"))
        (machine,) = network.instances(**{"reclo:role": "machine"})
        network.ec2.terminate_instances(InstanceIds=[machine["InstanceId"]])

        await lifecycle.watch_pending(stack.runtimes["instances"].context)
        (failed,) = await eventually(lambda: of_type(received, "InstanceLaunchFailed"))
        assert failed["reason"].startswith("the machine did not start:")
        assert of_type(received, "InstanceReady") == []
        (row,) = await rows(stack)
        assert row.state == "failed" and row.image_released_at is not None
        assert network.ec2.describe_images(Filters=[
            {"Name": "image-id", "Values": [ami]}])["Images"] == []
        # Nothing of the user's is left running: the gateway went too.
        assert network.instances() == []


async def test_a_machine_stopped_or_terminated_behind_reclos_back_is_recorded_so(
        tmp_path, unique, network):
    """The slower sweep over machines up or stopped (run by hand here): a shutdown from
    inside the machine is a stop (its 14 days start), a termination in the console a
    termination (the AMI released, the VPN gateway gone), not a row 'running' forever."""
    settings = settings_for("embedded", tmp_path, unique,
                            instances=network.settings(poll_seconds=3600))
    ami, _ = network.image("machine")
    async with running_stack(settings, ["instances"]) as (stack, _):
        service = stack.runtimes["instances"].context
        received = await listen(stack)
        await publish(stack, ImportCompleted(recovery_id=f"rec-{unique}", user_id=f"u{unique}",
                                             provider="aws", image_ref=ami))
        await eventually(lambda: rows_in_state(stack, "pending"))
        await lifecycle.watch_pending(service)
        await eventually(lambda: rows_in_state(stack, "running"))
        (machine,) = network.instances(**{"reclo:role": "machine"})

        network.ec2.stop_instances(InstanceIds=[machine["InstanceId"]])
        assert await lifecycle.watch_live(service) == ""  # one round looked at every one
        (stopped,) = await rows(stack)
        assert stopped.state == "stopped" and stopped.stopped_at is not None
        await eventually(lambda: of_type(received, "InstanceStopped"))

        network.ec2.terminate_instances(InstanceIds=[machine["InstanceId"]])
        await lifecycle.watch_live(service)
        (gone,) = await rows(stack)
        assert gone.state == "terminated" and gone.image_released_at is not None
        await eventually(lambda: of_type(received, "InstanceTerminated"))
        assert network.ec2.describe_images(Filters=[
            {"Name": "image-id", "Values": [ami]}])["Images"] == []
        assert network.instances() == []  # the user's VPN gateway went with the last machine


async def rows_in_state(stack, state: str) -> bool:
    return [r.state for r in await rows(stack)] == [state]
