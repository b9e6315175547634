"""The service definitions shipped with the agent: the systemd unit is one systemd accepts,
hardened as docs/agent.md says; the Windows service starts Python itself."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys

from .conftest import ROOT

PACKAGING = ROOT / "clients" / "agent" / "packaging"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(PACKAGING / "reclo-agent.service")
    return parser


def test_the_systemd_unit_is_hardened():
    service = unit()["Service"]
    assert service["User"] == "reclo" and service["NoNewPrivileges"] == "yes"
    assert service["AmbientCapabilities"] == service["CapabilityBoundingSet"] == "CAP_DAC_READ_SEARCH"
    assert service["ProtectSystem"] == "strict" and service["ReadOnlyPaths"] == "/"
    assert service["StateDirectory"] == "reclo-agent" and service["UMask"] == "0077"
    assert service["ExecStart"].split()[1:] == ["-m", "clients.agent", "--config", "/etc/reclo/agent.toml", "run"]


def test_systemd_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed to verify the unit (apt-get install systemd)"
    text = (PACKAGING / "reclo-agent.service").read_text()
    # The one thing that differs here: where Python is.
    copy = tmp_path / "reclo-agent.service"
    copy.write_text(text.replace("/opt/reclo/bin/python", sys.executable))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "reclo-agent.service" not in result.stderr, result.stderr  # no warning about our unit


def test_the_windows_service_runs_python_not_a_launcher():
    script = (PACKAGING / "install-windows.ps1").read_text()
    assert "sc.exe create ReCloAgent binPath= $BinPath" in script
    assert '$BinPath = "`"$VenvPython`" -m clients.agent --config `"$Config`" service-host"' in script
    assert "*S-1-5-18" in script and "/inheritance:r" in script


async def test_the_service_host_refuses_to_run_off_windows(agent):
    agent.write_config("")
    r = await agent("service-host")
    assert r.code == 1 and "only on Windows" in r.stderr, r
