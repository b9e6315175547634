import aiohttp
import pytest

from tests.harness import MODES, Api, running_stack, settings_for


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


@pytest.fixture
def settings(mode, tmp_path, unique):
    return settings_for(mode, tmp_path, unique)


@pytest.fixture
async def stack(settings):
    async with running_stack(settings) as (stack, base):
        stack.base_url = base
        yield stack


@pytest.fixture
async def api(stack):
    async with aiohttp.ClientSession() as session:
        yield Api(session, stack.base_url)
