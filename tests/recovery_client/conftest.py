from pathlib import Path

import pytest

from tests.harness import MODES, Api, running_stack, settings_for
from tests.recovery_client.support import PASSPHRASE, PASSWORD, Result, clean_env, run


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


async def _stack(mode, tmp_path, unique):
    settings = settings_for(mode, tmp_path, unique)
    async with running_stack(settings) as (stack, base):
        stack.base_url = base
        yield stack


@pytest.fixture
async def stack(mode, tmp_path, unique):
    async for stack in _stack(mode, tmp_path, unique):
        yield stack


@pytest.fixture
async def local_stack(tmp_path, unique):
    """The embedded stack alone, for what does not depend on the adapters."""
    async for stack in _stack("embedded", tmp_path, unique):
        yield stack


class Recover:
    """``reclo-recover`` as a user runs it: its own config folder, its password and the
    backup passphrase from the environment."""

    def __init__(self, folder: Path, password: str = PASSWORD) -> None:
        self.config = folder
        self.env = clean_env(RECLO_RECOVER_CONFIG_DIR=str(folder), RECLO_PASSWORD=password,
                             RECLO_PASSPHRASE=PASSPHRASE)

    async def __call__(self, *args: str, expect: int | None = 0, env: dict | None = None,
                       timeout: float = 180) -> Result:
        result = await run("reclo-recover", *args, env={**self.env, **(env or {})},
                           timeout=timeout)
        if expect is not None:
            assert result.code == expect, (args, result.code, result.stdout, result.stderr)
        return result


@pytest.fixture
def recover(tmp_path):
    return Recover(tmp_path / "recover-config")


def api_for(http, stack) -> Api:
    return Api(http, stack.base_url)
