"""The seed's FreeInstances job as the InstancesCleanupDue handler: machines stopped for 14
days before the tick's scheduled time are terminated with their images; younger ones stay."""

from datetime import timedelta

import aiohttp
from sqlalchemy import update

from services.instances.tables import InstanceRow
from shared.events import ImportCompleted, InstancesCleanupDue, utcnow
from tests.harness import Api, running_stack, settings_for
from tests.instances.helpers import (
    SERVICES,
    forget_listener,
    handled,
    listen,
    of_type,
    publish,
    sign_up,
)
from tests.support import eventually


async def test_stopped_for_the_retention_period_means_terminated(mode, tmp_path, unique,
                                                                 network):
    settings = settings_for(mode, tmp_path, unique, instances=network.settings())
    (old_ami, old_snapshot), (young_ami, young_snapshot) = (network.image("old"),
                                                            network.image("young"))
    try:
        async with running_stack(settings, SERVICES) as (stack, base), \
                aiohttp.ClientSession() as http:
            api = Api(http, base)
            user = await sign_up(api, f"ann{unique}")
            received = await listen(stack)
            launches = {"old": ("aws", old_ami), "young": ("aws", young_ami),
                        "local": ("local", "file:///images/disk.raw")}
            ids = {}
            for name, (provider, image) in launches.items():
                await publish(stack, ImportCompleted(recovery_id=f"{name}-{unique}",
                                                     user_id=user, provider=provider,
                                                     image_ref=image))
                (ready,) = await eventually(lambda n=name: of_type(
                    received, "InstanceReady", recovery_id=f"{n}-{unique}"))
                ids[name] = ready["instance_id"]
                status, body, _ = await api.call("POST", f"/api/v1/instances/{ids[name]}/stop")
                assert status == 200, body
            machines = {name: network.instances(**{"reclo:recovery": f"{name}-{unique}"})[0]
                        for name in ("old", "young")}
            (gw,) = network.instances(**{"reclo:role": "vpn-gateway"})

            # The tick's scheduled time is "now": stopped 15 days before it, and 13.
            tick = utcnow().replace(microsecond=0)
            ages = {"old": 15, "young": 13, "local": 15}
            db = stack.runtimes["instances"].db
            async with db.transaction() as session:
                for name, days in ages.items():
                    await session.execute(update(InstanceRow).where(
                        InstanceRow.id == ids[name]).values(
                            stopped_at=tick - timedelta(days=days)))
            first = await publish(stack, InstancesCleanupDue(scheduled_for=tick))
            await eventually(lambda: handled(stack, first))

            states = {name: (await api.call("GET", f"/api/v1/instances/{i}"))[1]["state"]
                      for name, i in ids.items()}
            assert states == {"old": "terminated", "young": "stopped", "local": "terminated"}
            await eventually(lambda: len(of_type(received, "InstanceTerminated")) == 2)
            assert {p["instance_id"] for p in of_type(received, "InstanceTerminated")} == {
                ids["old"], ids["local"]}

            def ec2_state(name):
                return network.instance(machines[name]["InstanceId"])["State"]["Name"]

            def image_exists(ami):
                return bool(network.ec2.describe_images(
                    Filters=[{"Name": "image-id", "Values": [ami]}])["Images"])

            def snapshot_exists(snapshot):
                return bool(network.ec2.describe_snapshots(
                    Filters=[{"Name": "snapshot-id", "Values": [snapshot]}])["Snapshots"])

            assert ec2_state("old") in ("shutting-down", "terminated")
            assert not image_exists(old_ami) and not snapshot_exists(old_snapshot)
            assert ec2_state("young") in ("stopping", "stopped")
            assert image_exists(young_ami) and snapshot_exists(young_snapshot)
            # The user still has a machine on aws: the gateway stays.
            assert network.instance(gw["InstanceId"])["State"]["Name"] == "running"

            # Two days later the younger one is due too, and the gateway goes with it.
            later = await publish(stack, InstancesCleanupDue(
                scheduled_for=tick + timedelta(days=2)))
            await eventually(lambda: handled(stack, later))
            assert ec2_state("young") in ("shutting-down", "terminated")
            assert not image_exists(young_ami) and not snapshot_exists(young_snapshot)
            assert network.instance(gw["InstanceId"])["State"]["Name"] in (
                "shutting-down", "terminated")
            await eventually(lambda: len(of_type(received, "InstanceTerminated")) == 3)
    finally:
        await forget_listener(settings)
