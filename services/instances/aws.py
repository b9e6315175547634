"""The EC2 adapter of the compute provider port (docs/aws.md "Instances").

What it makes for a user's recovery environment, in the recovery subnet's VPC:
- security group ``reclo-vpn-gateway-<user>``: inbound only UDP ``vpn_port`` (WireGuard)
  from ``vpn_client_cidr``;
- security group ``reclo-recovered-<user>``: inbound only from the first group, so only
  that user's gateway reaches that user's machines;
- the gateway: a small instance with a public address, set up by cloud-init
  (``gateway.py``), its peers published as its own tags.
Recovered machines launch from the imported AMI into the recovery subnet without a public
address.

Launches are idempotent twice over: an instance tagged for this recovery (or environment)
is found and adopted before anything is launched, and RunInstances carries a ClientToken, so
EC2 itself returns the first instance when a retry races a launch whose tags aren't visible
yet. (moto ignores ClientToken; the tags keep the tests honest.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AsyncExitStack
from ipaddress import IPv4Network

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from services.instances import domain
from services.instances.compute import (
    Environment,
    Gateway,
    LaunchSpec,
    Observed,
    ProviderError,
    ProviderUnavailable,
)
from services.instances.gateway import PEER_TAG_PREFIX, key_from_console, peer_tags, user_data
from services.instances.vpn import Peer, host_index
from shared.logs import get_logger
from shared.settings import InstancesSettings
from shared.unreachable import UNREACHABLE  # errors that will pass; others are the answer

log = get_logger(__name__)

# EC2 states -> the service's (domain.py). "stopping" counts as stopped: EC2 finishes it.
STATES = {"pending": domain.PENDING, "running": domain.RUNNING, "stopping": domain.STOPPED,
          "stopped": domain.STOPPED, "shutting-down": domain.TERMINATED,
          "terminated": domain.TERMINATED}
LIVE_EC2_STATES = ["pending", "running", "stopping", "stopped"]
TRANSIENT_CODES = frozenset({"RequestLimitExceeded", "Throttling", "InternalError",
                             "ServiceUnavailable", "Unavailable"})
GONE_CODES = frozenset({"InvalidInstanceID.NotFound", "InvalidAMIID.NotFound",
                        "InvalidAMIID.Unavailable", "InvalidSnapshot.NotFound"})


def error_text(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return domain.short_reason(f"{error.get('Code', 'Error')}: {error.get('Message', '')}")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _refused(exc: ClientError) -> Exception:
    """A ClientError as one of the port's errors."""
    if _code(exc) in TRANSIENT_CODES:
        return ProviderUnavailable(error_text(exc))
    return ProviderError(error_text(exc))


def _tags(pairs: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in pairs.items()]


def _rule_set(permissions: list[dict]) -> set[tuple]:
    """Ingress rules in a form two descriptions of one rule compare equal in."""
    rules = set()
    for p in permissions:
        proto = str(p.get("IpProtocol"))
        ports = (p.get("FromPort", -1) if proto != "-1" else -1,
                 p.get("ToPort", -1) if proto != "-1" else -1)
        for r in p.get("IpRanges", []):
            rules.add((proto, *ports, "cidr", r["CidrIp"]))
        for r in p.get("Ipv6Ranges", []):
            rules.add((proto, *ports, "cidr6", r["CidrIpv6"]))
        for r in p.get("UserIdGroupPairs", []):
            rules.add((proto, *ports, "group", r["GroupId"]))
        for r in p.get("PrefixListIds", []):
            rules.add((proto, *ports, "prefix", r["PrefixListId"]))
    return rules


def _permission(rule: tuple) -> dict:
    proto, low, high, kind, value = rule
    permission: dict = {"IpProtocol": proto}
    if proto != "-1":
        permission.update(FromPort=low, ToPort=high)
    key, field = {"cidr": ("IpRanges", "CidrIp"), "cidr6": ("Ipv6Ranges", "CidrIpv6"),
                  "group": ("UserIdGroupPairs", "GroupId"),
                  "prefix": ("PrefixListIds", "PrefixListId")}[kind]
    permission[key] = [{field: value}]
    return permission


class Ec2Provider:
    name = "aws"
    reports_state = True

    def __init__(self, settings: InstancesSettings, region: str) -> None:
        self.settings = settings
        self.region = region
        self._stack: AsyncExitStack | None = None
        self._client = None
        self._lock = asyncio.Lock()
        # The client GetConsoleOutput goes through; None: the one client. (moto answers it
        # with a fixed text, so tests put botocore's Stubber on a client of their own.)
        self.console_client = None

    async def client(self):
        """One aiobotocore client, opened on first use (building the service does no I/O)."""
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    stack = AsyncExitStack()
                    config = AioConfig(retries={"max_attempts": 3, "mode": "standard"})
                    self._client = await stack.enter_async_context(get_session().create_client(
                        "ec2", region_name=self.region, endpoint_url=self.settings.ec2_endpoint,
                        config=config))
                    self._stack = stack
        return self._client

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
            self._client = None

    async def _call(self, operation: str, *, gone_ok: bool = False, **params):
        """One EC2 call, its errors as the port's; with ``gone_ok``, None when what it
        names doesn't exist (any more)."""
        ec2 = await self.client()
        try:
            return await getattr(ec2, operation)(**params)
        except ClientError as exc:
            if gone_ok and _code(exc) in GONE_CODES:
                return None
            raise _refused(exc) from None
        except UNREACHABLE as exc:
            raise ProviderUnavailable(f"EC2 is unreachable: {exc}") from None
        except BotoCoreError as exc:  # no credentials, a bad parameter: not for retrying
            raise ProviderError(str(exc)) from None

    # --- the environment -------------------------------------------------------------

    async def prepare(self, env: Environment) -> Environment:
        s = self.settings
        if not s.subnet_id:
            raise ProviderError("no recovery subnet is configured "
                                "(RECLO_INSTANCES__SUBNET_ID)")
        if not s.gateway_image_id:
            raise ProviderError("no image is configured for the VPN gateway "
                                "(RECLO_INSTANCES__GATEWAY_IMAGE_ID)")
        subnet = await self._subnet(s.subnet_id)
        gateway_subnet = s.gateway_subnet_id or s.subnet_id
        if gateway_subnet != s.subnet_id:
            other = await self._subnet(gateway_subnet)
            if other["VpcId"] != subnet["VpcId"]:
                raise ProviderError(f"the gateway subnet {gateway_subnet} is not in the VPC "
                                    f"of the recovery subnet {s.subnet_id}")
        vpc = subnet["VpcId"]
        routed = (IPv4Network(subnet["CidrBlock"]),)
        gateway_name, machine_name = domain.group_names(env.user_id)
        owner = {domain.TAG_USER: env.user_id}
        gateway_group = await self.ensure_group(
            vpc, gateway_name, "ReClo VPN gateway: WireGuard from clients only", owner,
            {("udp", s.vpn_port, s.vpn_port, "cidr", str(s.vpn_client_cidr))})
        machine_group = await self.ensure_group(
            vpc, machine_name, "ReClo recovered machines: only through the VPN gateway", owner,
            {("-1", -1, -1, "group", gateway_group)})
        # An environment made before keeps its gateway (a dead one is replaced by a new
        # generation of the environment, with a new token).
        gateway_id = env.gateway_instance_id or await self._find(
            vpc, {domain.TAG_ENVIRONMENT: env.token})
        if gateway_id is None:
            result = await self._call(
                "run_instances", ImageId=s.gateway_image_id, InstanceType=s.gateway_instance_type,
                MinCount=1, MaxCount=1, ClientToken=env.token,
                UserData=user_data(s.vpn_subnet, s.vpn_port, routed),
                # Tags in instance metadata: how the gateway learns its peers, credential-free.
                MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled",
                                 "InstanceMetadataTags": "enabled"},
                NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": gateway_subnet,
                                    "Groups": [gateway_group],
                                    "AssociatePublicIpAddress": True}],
                TagSpecifications=[{"ResourceType": "instance", "Tags": _tags({
                    "Name": f"reclo-vpn-gateway-{env.user_id}", domain.TAG_USER: env.user_id,
                    domain.TAG_ENVIRONMENT: env.token, domain.TAG_ROLE: domain.ROLE_GATEWAY})}],
            )
            gateway_id = result["Instances"][0]["InstanceId"]
            log.info("vpn gateway launched", environment_id=env.id, instance=gateway_id)
        return Environment(id=env.id, user_id=env.user_id, token=env.token, routed=routed,
                           vpc_id=vpc, gateway_group_id=gateway_group,
                           machine_group_id=machine_group, gateway_instance_id=gateway_id)

    async def _subnet(self, subnet_id: str) -> dict:
        found = await self._call("describe_subnets", SubnetIds=[subnet_id])
        return found["Subnets"][0]

    async def ensure_group(self, vpc: str, name: str, description: str, tags: dict[str, str],
                           rules: set[tuple]) -> str:
        """The group's id, its inbound rules made exactly ``rules`` (a rule added by hand
        is taken away again: these groups admit only the VPN)."""
        found = await self._call("describe_security_groups", Filters=[
            {"Name": "vpc-id", "Values": [vpc]}, {"Name": "group-name", "Values": [name]}])
        if found["SecurityGroups"]:
            group = found["SecurityGroups"][0]
        else:
            try:
                created = await self._call(
                    "create_security_group", GroupName=name, Description=description,
                    VpcId=vpc, TagSpecifications=[{"ResourceType": "security-group",
                                                   "Tags": _tags({"Name": name, **tags})}])
            except ProviderError as exc:
                if not str(exc).startswith("InvalidGroup.Duplicate"):  # a concurrent ensure
                    raise
                return await self.ensure_group(vpc, name, description, tags, rules)
            group = {"GroupId": created["GroupId"], "IpPermissions": []}
        group_id = group["GroupId"]
        present = _rule_set(group.get("IpPermissions", []))
        extra, missing = present - rules, rules - present
        if extra:
            await self._call("revoke_security_group_ingress", GroupId=group_id,
                             IpPermissions=[_permission(r) for r in sorted(extra)])
        if missing:
            try:
                await self._call("authorize_security_group_ingress", GroupId=group_id,
                                 IpPermissions=[_permission(r) for r in sorted(missing)])
            except ProviderError as exc:
                if not str(exc).startswith("InvalidPermission.Duplicate"):  # a concurrent one
                    raise
        return group_id

    async def gateway(self, env: Environment, *, key: bool = True) -> Gateway:
        if env.gateway_instance_id is None:
            return Gateway(failed="the environment has no gateway")
        found = await self._call("describe_instances", gone_ok=True,
                                 InstanceIds=[env.gateway_instance_id])
        if found is None:
            return Gateway(failed="the VPN gateway instance is gone")
        instance = found["Reservations"][0]["Instances"][0]
        state = instance["State"]["Name"]
        if state in ("shutting-down", "terminated", "stopping", "stopped"):
            return Gateway(failed=f"the VPN gateway is {state}")
        address = instance.get("PublicIpAddress")
        if state != "running" or not address or not key:
            return Gateway()
        public_key = key_from_console(await self.console(env.gateway_instance_id))
        return Gateway(public_key=public_key, endpoint=f"{address}:{self.settings.vpn_port}")

    async def console(self, instance_id: str) -> str:
        """The instance's latest console output (botocore decodes its base64)."""
        client = self.console_client or await self.client()
        try:
            found = await client.get_console_output(InstanceId=instance_id, Latest=True)
        except ClientError as exc:
            if _code(exc) != "UnsupportedOperation":
                raise _refused(exc) from None
            # Only Nitro instances have the latest output; others the last snapshot of it.
            found = await self._call("get_console_output", InstanceId=instance_id)
        return found.get("Output") or ""

    async def publish_peers(self, env: Environment, subnet: IPv4Network,
                            peers: Sequence[Peer]) -> None:
        if env.gateway_instance_id is None:
            raise ProviderError("the environment has no gateway")
        wanted = peer_tags([(host_index(subnet, p.address), p.public_key, p.address)
                            for p in peers])
        current = (await self.observe(env.gateway_instance_id)).tags
        stale = [k for k in current if k.startswith(PEER_TAG_PREFIX) and k not in wanted]
        if stale:
            await self._call("delete_tags", Resources=[env.gateway_instance_id],
                             Tags=[{"Key": k} for k in stale])
        changed = {k: v for k, v in wanted.items() if current.get(k) != v}
        if changed:
            await self._call("create_tags", Resources=[env.gateway_instance_id],
                             Tags=_tags(changed))

    async def retire(self, env: Environment) -> None:
        # The security groups stay: they cost nothing, and the machines' group can't be
        # deleted while terminating machines still hold it. The next environment reuses them.
        if env.gateway_instance_id is not None:
            await self.terminate(env.gateway_instance_id)

    # --- machines --------------------------------------------------------------------

    async def launch(self, spec: LaunchSpec, env: Environment) -> tuple[str, Observed]:
        if env.vpc_id is None or env.machine_group_id is None or not self.settings.subnet_id:
            raise ProviderError("the recovery environment has no network")
        existing = await self._find(env.vpc_id, {domain.TAG_RECOVERY: spec.recovery_id,
                                                 domain.TAG_ROLE: domain.ROLE_MACHINE})
        if existing is not None:
            log.info("machine found, not launched again", instance=existing)
            return existing, await self.observe(existing)
        tags = _tags({"Name": f"reclo-recovery-{spec.recovery_id}",
                      domain.TAG_USER: spec.user_id, domain.TAG_RECOVERY: spec.recovery_id,
                      domain.TAG_ROLE: domain.ROLE_MACHINE})
        result = await self._call(
            "run_instances", ImageId=spec.image_ref,
            InstanceType=spec.instance_type or self.settings.instance_type,
            MinCount=1, MaxCount=1, ClientToken=domain.client_token("machine", spec.recovery_id),
            NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": self.settings.subnet_id,
                                "Groups": [env.machine_group_id],
                                "AssociatePublicIpAddress": False}],
            MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags},
                               {"ResourceType": "volume", "Tags": tags}],
        )
        instance = result["Instances"][0]
        log.info("machine launched", instance=instance["InstanceId"])
        return instance["InstanceId"], self._observed(instance)

    async def _find(self, vpc: str, tags: dict[str, str]) -> str | None:
        """A live instance of the VPC with these tags, if there is one."""
        filters = [{"Name": "vpc-id", "Values": [vpc]}]
        filters += [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
        filters.append({"Name": "instance-state-name", "Values": LIVE_EC2_STATES})
        found = await self._call("describe_instances", Filters=filters)
        ids = sorted(i["InstanceId"] for r in found["Reservations"] for i in r["Instances"])
        return ids[0] if ids else None

    @staticmethod
    def _observed(instance: dict) -> Observed:
        state = STATES.get(instance["State"]["Name"], domain.PENDING)
        reason = (instance.get("StateReason") or {}).get("Message")
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        return Observed(state=state, address=instance.get("PrivateIpAddress"), reason=reason,
                        tags=tags)

    async def observe(self, provider_instance_id: str) -> Observed:
        found = await self._call("describe_instances", gone_ok=True,
                                 InstanceIds=[provider_instance_id])
        if found is None:
            return Observed(state=domain.TERMINATED, reason="the instance is gone")
        return self._observed(found["Reservations"][0]["Instances"][0])

    async def start(self, provider_instance_id: str) -> Observed:
        result = await self._call("start_instances", InstanceIds=[provider_instance_id])
        state = result["StartingInstances"][0]["CurrentState"]["Name"]
        return Observed(state=STATES.get(state, domain.PENDING))

    async def stop(self, provider_instance_id: str) -> None:
        await self._call("stop_instances", InstanceIds=[provider_instance_id])

    async def terminate(self, provider_instance_id: str) -> None:
        await self._call("terminate_instances", gone_ok=True, InstanceIds=[provider_instance_id])

    async def release_image(self, image_ref: str) -> None:
        """Deregister the AMI, then delete its snapshots (EC2 keeps them otherwise, and
        they are what costs). Already gone counts as done."""
        found = await self._call("describe_images", gone_ok=True, ImageIds=[image_ref])
        images = found["Images"] if found else []
        snapshots = [m["Ebs"]["SnapshotId"] for image in images
                     for m in image.get("BlockDeviceMappings", [])
                     if m.get("Ebs", {}).get("SnapshotId")]
        if images:
            await self._call("deregister_image", gone_ok=True, ImageId=image_ref)
        for snapshot in snapshots:
            await self._call("delete_snapshot", gone_ok=True, SnapshotId=snapshot)
        log.info("image released", image=image_ref, snapshots=len(snapshots))
