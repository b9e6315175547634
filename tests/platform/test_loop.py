import asyncio
import importlib.util

from shared.http.loop import run


def test_runs_a_coroutine_on_uvloop_when_installed():
    async def main() -> str:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()).__module__

    module = run(main())
    expected = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    assert module.startswith(expected)
