"""The instances service's rules, free of I/O: the states of a recovered machine and which
transitions a user may ask for, when a stopped machine is cleaned up, and how ReClo names
what it creates in the cloud."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Literal

PENDING, RUNNING, STOPPED, TERMINATED, FAILED = (
    "pending", "running", "stopped", "terminated", "failed")
# Machines that exist at the provider (and keep their recovery environment alive).
LIVE = (PENDING, RUNNING, STOPPED)

Action = Literal["start", "stop", "terminate"]

# From which states each action may be asked for. Stopping a pending machine is refused as
# EC2 refuses it; asking for the state a machine is already in is a conflict too, so a
# client learns it raced with someone else.
ALLOWED: dict[str, tuple[str, ...]] = {
    "start": (STOPPED,),
    "stop": (RUNNING,),
    "terminate": (PENDING, RUNNING, STOPPED),
}

# Environments (a user's VPN gateway and its peers) on one provider.
ENV_PROVISIONING, ENV_READY, ENV_FAILED, ENV_RETIRED = (
    "provisioning", "ready", "failed", "retired")

# A gateway that hasn't shown its public key this long after it was asked for has failed
# (cloud-init installing WireGuard takes a minute or two).
GATEWAY_BOOT_SECONDS = 15 * 60
# AWS accepts a ClientToken of at most 64 ASCII characters.
CLIENT_TOKEN_MAX = 64
# A failure reason kept and sent on: AWS's messages fit, a runaway one is cut.
REASON_MAX = 1000

TAG_USER = "reclo:user"
TAG_RECOVERY = "reclo:recovery"
TAG_ENVIRONMENT = "reclo:environment"
TAG_ROLE = "reclo:role"
ROLE_MACHINE = "machine"
ROLE_GATEWAY = "vpn-gateway"


class ImpossibleTransition(Exception):
    pass


def new_id() -> str:
    return secrets.token_hex(16)


def check_transition(state: str, action: Action) -> None:
    """Raise :class:`ImpossibleTransition` (a 409) unless ``action`` fits ``state``."""
    if state in ALLOWED[action]:
        return
    if state in (TERMINATED, FAILED):
        raise ImpossibleTransition(f"the instance is {state}: it can't {action} any more")
    if action == "stop" and state == PENDING:
        raise ImpossibleTransition("the instance is pending: stop it once it runs")
    raise ImpossibleTransition(f"the instance is {state}: it can't {action} now")


def after(action: Action, provider_state: str | None = None) -> str:
    """The state recorded once the provider accepted ``action``. A started aws machine is
    pending until the reconcile sweep sees it running."""
    if action == "start":
        return provider_state if provider_state in (PENDING, RUNNING) else PENDING
    return {"stop": STOPPED, "terminate": TERMINATED}[action]


def cleanup_cutoff(scheduled_for: datetime, retention_days: float) -> datetime:
    """Machines stopped at or before this are cleaned up by the tick scheduled for then."""
    return scheduled_for - timedelta(days=retention_days)


def client_token(kind: str, key: str) -> str:
    """An idempotency token for EC2 RunInstances: the same request (a redelivered event)
    gets the same token, and so the same instance."""
    token = f"reclo-{kind}-{hashlib.sha256(key.encode()).hexdigest()[:40]}"
    assert len(token) <= CLIENT_TOKEN_MAX
    return token


def environment_token(user_id: str, provider: str, generation: int) -> str:
    """Names one generation of a user's environment the same on every retry."""
    return client_token("env", f"{user_id}/{provider}/{generation}")


def group_names(user_id: str) -> tuple[str, str]:
    """Security groups of one user's environment: the gateway's, the machines'. One pair per
    user, so a gateway reaches only its own user's machines."""
    return f"reclo-vpn-gateway-{user_id}", f"reclo-recovered-{user_id}"


def short_reason(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= REASON_MAX else text[: REASON_MAX - 1] + "…"
