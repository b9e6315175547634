"""Backup: hosts, the backup catalogue and the agents' backup sessions (presigned URLs,
then commit), retention and garbage collection of the bucket."""
