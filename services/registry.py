"""Every service by name, with the function that builds it. The one place that knows them
all: ``reclo up`` and ``reclo serve`` use it; services never import each other."""

from __future__ import annotations

from collections.abc import Callable

from shared.bus import Bus
from shared.runtime import ServiceRuntime
from shared.settings import Settings

Builder = Callable[[Settings, Bus, bytes], ServiceRuntime]


def builders() -> dict[str, Builder]:
    from services.auth.app import build as auth
    from services.backup.app import build as backup
    from services.gateway.app import build as gateway
    from services.instances.app import build as instances
    from services.recovery.app import build as recovery
    from services.scheduler.app import build as scheduler

    # The gateway last: it starts once the services it fronts listen.
    return {"auth": auth, "backup": backup, "scheduler": scheduler, "recovery": recovery,
            "instances": instances, "gateway": gateway}


def names() -> list[str]:
    return list(builders())
