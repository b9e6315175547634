# Installs the ReClo Backup Manager as a Windows service (docs/agent.md, "Install on Windows").
# Run in an elevated PowerShell:  .\install-windows.ps1 -Wheel .\reclo-0.1.0-py3-none-any.whl
#
# - a Python virtual environment in %ProgramFiles%\ReClo\agent with the agent in it;
# - %ProgramData%\ReClo for agent.toml, the secrets file and the state, readable only by
#   SYSTEM and Administrators;
# - the service "ReCloAgent" (LocalSystem, delayed automatic start, restarted on failure),
#   whose binPath is python.exe itself: a pip launcher (reclo-agent.exe) would start Python
#   as a child process that the Service Control Manager could not talk to.
#Requires -RunAsAdministrator
param(
    [Parameter(Mandatory = $true)][string]$Wheel,
    [string]$Python = "py -3.11"
)
$ErrorActionPreference = "Stop"

$AgentHome = Join-Path $env:ProgramFiles "ReClo\agent"
$Data = Join-Path $env:ProgramData "ReClo"
$VenvPython = Join-Path $AgentHome "Scripts\python.exe"

if (-not (Test-Path $VenvPython)) {
    Invoke-Expression "$Python -m venv `"$AgentHome`""
}
& $VenvPython -m pip install --quiet --upgrade $Wheel
if ($LASTEXITCODE -ne 0) { throw "pip install failed" }

New-Item -ItemType Directory -Force -Path $Data | Out-Null
# Only SYSTEM (the service) and Administrators, inherited by everything inside.
icacls $Data /inheritance:r /grant:r "*S-1-5-18:(OI)(CI)F" "*S-1-5-32-544:(OI)(CI)F" | Out-Null

$Config = Join-Path $Data "agent.toml"
$BinPath = "`"$VenvPython`" -m clients.agent --config `"$Config`" service-host"
if (-not (Get-Service ReCloAgent -ErrorAction SilentlyContinue)) {
    sc.exe create ReCloAgent binPath= $BinPath start= delayed-auto DisplayName= "ReClo Backup Manager" | Out-Null
} else {
    sc.exe config ReCloAgent binPath= $BinPath | Out-Null
}
sc.exe description ReCloAgent "Backs up this server to ReClo: one full a week, incrementals in between." | Out-Null
sc.exe failure ReCloAgent reset= 86400 actions= restart/60000/restart/60000/restart/600000 | Out-Null

Write-Host "Installed. Next, in this elevated PowerShell:"
Write-Host "  & `"$VenvPython`" -m clients.agent register --server https://backup.example.com --username you@example.com"
Write-Host "  & `"$VenvPython`" -m clients.agent init"
Write-Host "  notepad `"$Config`"     # [[sources]], [schedule]"
Write-Host "  Start-Service ReCloAgent"
