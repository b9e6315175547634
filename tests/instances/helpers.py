"""What the instances tests share: a VPC in moto, users through the gateway, events on the
bus and what the service emitted."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from sqlalchemy import select

from services.instances.tables import InstanceRow, inbox, outbox
from shared.events import Envelope, Event, envelope_for
from shared.settings import InstancesSettings, Settings
from tests import infra
from tests.harness import Api, delete_queues

# What the instances tests run: auth for users, the gateway for the REST surface.
SERVICES = ["auth", "instances", "gateway"]
RECOVERY_CIDR = "10.0.1.0/24"
LISTENER = "listener"


@dataclass
class MotoNetwork:
    ec2: object
    unique: str
    vpc_id: str
    subnet_id: str
    gateway_image: str
    images: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, ec2, unique: str) -> MotoNetwork:
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=RECOVERY_CIDR,
                                   AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
        net = cls(ec2, unique, vpc, subnet, gateway_image="")
        net.gateway_image = net.image("gateway")[0]
        return net

    def image(self, name: str) -> tuple[str, str]:
        """An AMI with one snapshot behind it, as an import leaves one: (ami, snapshot)."""
        volume = self.ec2.create_volume(AvailabilityZone="us-east-1a", Size=8)["VolumeId"]
        snapshot = self.ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
        ami = self.ec2.register_image(
            Name=f"reclo-test-{self.unique}-{name}", RootDeviceName="/dev/xvda",
            Architecture="x86_64", VirtualizationType="hvm",
            BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot}}],
        )["ImageId"]
        self.ec2.delete_volume(VolumeId=volume)
        self.images.append(ami)
        # The snapshot the AMI names: moto makes one of its own for a registered image (and
        # ours is then of no use).
        (image,) = self.ec2.describe_images(ImageIds=[ami])["Images"]
        (mapping,) = image["BlockDeviceMappings"]
        if mapping["Ebs"]["SnapshotId"] != snapshot:
            self.ec2.delete_snapshot(SnapshotId=snapshot)
        return ami, mapping["Ebs"]["SnapshotId"]

    def settings(self, **overrides) -> InstancesSettings:
        values = dict(ec2_endpoint=infra.s3_endpoint(), region="us-east-1",
                      subnet_id=self.subnet_id, gateway_image_id=self.gateway_image,
                      poll_seconds=0.2)
        values.update(overrides)
        return InstancesSettings(**values)

    def instances(self, **tags: str) -> list[dict]:
        """Instances in this VPC that aren't terminated, with these tags."""
        filters = [{"Name": "vpc-id", "Values": [self.vpc_id]},
                   {"Name": "instance-state-name",
                    "Values": ["pending", "running", "stopping", "stopped"]}]
        filters += [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
        found = self.ec2.describe_instances(Filters=filters)
        return [i for r in found["Reservations"] for i in r["Instances"]]

    def instance(self, instance_id: str) -> dict:
        return self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0][
            "Instances"][0]

    def group(self, name: str) -> dict:
        (group,) = self.ec2.describe_security_groups(Filters=[
            {"Name": "vpc-id", "Values": [self.vpc_id]},
            {"Name": "group-name", "Values": [name]}])["SecurityGroups"]
        return group

    def tear_down(self) -> None:
        ids = [i["InstanceId"] for i in self.instances()]
        if ids:
            self.ec2.terminate_instances(InstanceIds=ids)
        for ami in self.images:
            try:
                self.ec2.deregister_image(ImageId=ami)
            except self.ec2.exceptions.ClientError:
                pass


def tags_of(instance: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def groups_of(instance: dict) -> list[str]:
    (nic,) = instance["NetworkInterfaces"]
    return [g["GroupId"] for g in nic["Groups"]]


async def sign_up(api: Api, name: str) -> str:
    """Register and log in; the user's id."""
    await api.register_and_login(name)
    status, me, _ = await api.call("GET", "/api/v1/auth/me")
    assert status == 200, me
    return me["id"]


async def publish(stack, event: Event) -> Envelope:
    envelope = envelope_for(event)
    await stack.bus.publish(envelope)
    return envelope


async def listen(stack) -> list[Envelope]:
    """Every event the instances service sends, as a consumer on the bus receives it."""
    received: list[Envelope] = []

    async def keep(envelope: Envelope) -> None:
        received.append(envelope)

    prefix = stack.settings.bus.queue_prefix
    await stack.bus.subscribe(f"{prefix}.{LISTENER}", ["instances.#"], keep)
    return received


async def forget_listener(settings: Settings) -> None:
    await delete_queues(settings, [LISTENER])


def of_type(received: list[Envelope], type_: str, **payload) -> list[dict]:
    return [e.payload for e in received if e.type == type_
            and all(e.payload.get(k) == v for k, v in payload.items())]


async def handled(stack, envelope: Envelope) -> bool:
    """Has the instances service handled this event (its inbox says so)?"""
    db = stack.runtimes["instances"].db
    async with db.sessions() as session:
        found = await session.scalar(select(inbox.c.event_id).where(
            inbox.c.event_id == str(envelope.id)))
    return found is not None


async def emitted(stack) -> list[tuple[str, dict]]:
    db = stack.runtimes["instances"].db
    async with db.sessions() as session:
        rows = (await session.execute(select(outbox.c.envelope).order_by(outbox.c.seq))).all()
    return [(json.loads(r.envelope)["type"], json.loads(r.envelope)["payload"]) for r in rows]


async def rows(stack) -> list[InstanceRow]:
    db = stack.runtimes["instances"].db
    async with db.sessions() as session:
        return list((await session.scalars(select(InstanceRow))).all())
