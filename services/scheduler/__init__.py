"""Scheduler: turns time into events (``TokensExpiryDue``, ``BackupsVerifyDue``, ...), each
tick emitted once however many replicas run, a tick missed while down emitted on start."""
