"""Running `reclo-agent run` as a Windows service, without pywin32.

A Windows service is a program that talks to the Service Control Manager (SCM): it calls
StartServiceCtrlDispatcherW, which calls back a "service main" on a new thread; that
registers a control handler (for Stop and Shutdown) and reports its state with
SetServiceStatus. A plain console program started by the SCM would be killed after 30
seconds for never reporting "running". The four calls are made here through ctypes, so
the agent installs with pip alone.

    sc.exe create ReCloAgent binPath= "\"C:\\Program Files\\ReClo\\agent\\Scripts\\reclo-agent.exe\" service-host" ...

(docs/agent.md has the exact install commands; packaging/install-windows.ps1 runs them.)
On Stop or Shutdown the running backup is cancelled and reported to the server as
interrupted; the next start resumes it without uploading again what arrived.

Not testable off Windows.
"""

from __future__ import annotations

import asyncio
import ctypes
import sys
import threading
from typing import Awaitable, Callable

SERVICE_NAME = "ReCloAgent"
DISPLAY_NAME = "ReClo Backup Manager"

_SERVICE_WIN32_OWN_PROCESS = 0x10
_SERVICE_STOPPED = 1
_SERVICE_START_PENDING = 2
_SERVICE_STOP_PENDING = 3
_SERVICE_RUNNING = 4
_SERVICE_ACCEPT_STOP = 0x1
_SERVICE_ACCEPT_SHUTDOWN = 0x4
_SERVICE_CONTROL_STOP = 1
_SERVICE_CONTROL_INTERROGATE = 4
_SERVICE_CONTROL_SHUTDOWN = 5
_NO_ERROR = 0
_ERROR_CALL_NOT_IMPLEMENTED = 120
_ERROR_SERVICE_SPECIFIC_ERROR = 1066
# How long the SCM should wait for a stop: cancelling a backup and telling the server.
_STOP_WAIT_HINT_MS = 30_000


def host(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run `main(stop)` as the service; `stop` is set when Windows asks the service to stop."""
    if sys.platform != "win32":
        raise RuntimeError("the Windows service host runs only on Windows")
    from ctypes import wintypes

    advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)

    class ServiceStatus(ctypes.Structure):
        _fields_ = [(name, wintypes.DWORD) for name in (
            "dwServiceType", "dwCurrentState", "dwControlsAccepted", "dwWin32ExitCode",
            "dwServiceSpecificExitCode", "dwCheckPoint", "dwWaitHint")]

    service_main_type = ctypes.WINFUNCTYPE(None, wintypes.DWORD, ctypes.POINTER(wintypes.LPWSTR))
    handler_type = ctypes.WINFUNCTYPE(wintypes.DWORD, wintypes.DWORD, wintypes.DWORD,
                                      wintypes.LPVOID, wintypes.LPVOID)

    class ServiceTableEntry(ctypes.Structure):
        _fields_ = [("lpServiceName", wintypes.LPWSTR), ("lpServiceProc", service_main_type)]

    advapi32.RegisterServiceCtrlHandlerExW.restype = wintypes.HANDLE
    advapi32.RegisterServiceCtrlHandlerExW.argtypes = [wintypes.LPCWSTR, handler_type, wintypes.LPVOID]
    advapi32.SetServiceStatus.argtypes = [wintypes.HANDLE, ctypes.POINTER(ServiceStatus)]
    advapi32.StartServiceCtrlDispatcherW.argtypes = [ctypes.POINTER(ServiceTableEntry)]

    status = ServiceStatus(_SERVICE_WIN32_OWN_PROCESS, _SERVICE_START_PENDING, 0, _NO_ERROR, 0, 0, 10_000)
    state: dict = {"handle": None, "loop": None, "stop": None, "exit": 0}
    lock = threading.Lock()

    def report(current: int, exit_code: int = 0) -> None:
        with lock:
            status.dwCurrentState = current
            status.dwControlsAccepted = (_SERVICE_ACCEPT_STOP | _SERVICE_ACCEPT_SHUTDOWN) if current == _SERVICE_RUNNING else 0
            status.dwWin32ExitCode = _ERROR_SERVICE_SPECIFIC_ERROR if exit_code else _NO_ERROR
            status.dwServiceSpecificExitCode = exit_code
            status.dwCheckPoint = 0 if current in (_SERVICE_RUNNING, _SERVICE_STOPPED) else status.dwCheckPoint + 1
            status.dwWaitHint = _STOP_WAIT_HINT_MS if current == _SERVICE_STOP_PENDING else 0
            advapi32.SetServiceStatus(state["handle"], ctypes.byref(status))

    def on_control(control, _event_type, _event_data, _context):
        if control in (_SERVICE_CONTROL_STOP, _SERVICE_CONTROL_SHUTDOWN):
            report(_SERVICE_STOP_PENDING)
            loop, stop = state["loop"], state["stop"]
            if loop is not None and stop is not None:
                loop.call_soon_threadsafe(stop.set)
            return _NO_ERROR
        if control == _SERVICE_CONTROL_INTERROGATE:
            return _NO_ERROR
        return _ERROR_CALL_NOT_IMPLEMENTED

    handler = handler_type(on_control)  # kept referenced: the SCM calls it until the end

    async def serve() -> int:
        state["loop"] = asyncio.get_running_loop()
        state["stop"] = asyncio.Event()
        report(_SERVICE_RUNNING)
        return await main(state["stop"])

    def service_main(_argc, _argv):
        state["handle"] = advapi32.RegisterServiceCtrlHandlerExW(SERVICE_NAME, handler, None)
        if not state["handle"]:
            return
        try:
            state["exit"] = asyncio.run(serve())
        except BaseException:
            state["exit"] = 1
        report(_SERVICE_STOPPED, state["exit"])

    entry = service_main_type(service_main)
    table = (ServiceTableEntry * 2)(ServiceTableEntry(SERVICE_NAME, entry), ServiceTableEntry(None, service_main_type()))
    if not advapi32.StartServiceCtrlDispatcherW(table):
        error = ctypes.get_last_error()
        raise OSError(error, "StartServiceCtrlDispatcherW failed (not started by the Service Control Manager? "
                             "use `reclo-agent run` in a console)")
    return state["exit"]
