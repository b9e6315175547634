"""Windows-only parts of the agent: VSS shadow copies (vss.py) and running as a Windows
service without pywin32 (service.py). They import on any system (the layering test
imports every client module) and touch Windows APIs only when called there."""
