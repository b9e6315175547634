"""ReClo's client programs: the Backup Manager (agent) and the Recovery Manager.

They import only the client-safe part of shared/ (the repository format, the API models),
so they install without a database driver or a message broker client.
"""
