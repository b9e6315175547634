"""The instances service's event handlers."""

from __future__ import annotations

from services.instances import environments, lifecycle
from shared.events import ImportCompleted, InstancesCleanupDue
from shared.inbox import Context
from shared.logs import get_logger

log = get_logger(__name__)


async def launch_instance(ctx: Context, event: ImportCompleted) -> None:
    """An image is imported: launch the machine, answer InstanceReady (or, once the sweep
    sees it running, for aws) or InstanceLaunchFailed."""
    await lifecycle.launch(ctx.session, ctx.service, event, ctx.emit)


async def clean_up_stopped_instances(ctx: Context, event: InstancesCleanupDue) -> None:
    """The seed's FreeInstances job: machines stopped for the retention period are
    terminated and their images deleted; gateways nobody needs any more are removed."""
    done = await lifecycle.clean_up(ctx.session, ctx.service, event.scheduled_for, ctx.emit)
    await environments.retire_unused(ctx.session, ctx.service)
    log.info("stopped instances cleaned up", count=done)


EVENT_HANDLERS = {
    ImportCompleted: launch_instance,
    InstancesCleanupDue: clean_up_stopped_instances,
}
