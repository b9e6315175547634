"""The Recovery Manager, ``reclo-recover``: list backups, recover one to AWS or to a local
disk image, follow its progress, manage the recovered machines and their VPN, download the
image. Talks only to the gateway's /api/v1; imports only client-safe code."""
