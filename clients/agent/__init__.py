"""reclo-agent, the Backup Manager: backs up a server's folders and disk images into its
repository in the ReClo bucket, through URLs the backup service presigns (or into a
folder such as a USB disk). docs/agent.md is the administrator's guide.

Read in this order:

    cli          the commands and their exit codes (exits.py)
    config       the TOML file; secretfile: the agent key and passphrase (0600)
    target       where the repository lives: the server (remote_store) or a folder
    backup       one backup: pre commands, session, archiver, commit or fail, post commands
    schedule     when the next backup is due, full or incremental (pure)
    daemon       `run`: keeps the schedule, logs JSON lines (jsonlog)
    progress     progress bar, JSON lines, or quiet
    packrefs     which packs a snapshot and an index file reference (for the service's GC)
    throttle     the upload bandwidth limit; retrying: riding out a flaky network
    hooks        pre/post commands; state: what the agent remembers between runs
    windows/     VSS shadow copies and the Windows service host

Imports only client-safe code: shared.format, shared.api, aiohttp, rich, the stdlib.
"""

from functools import cache


@cache
def version() -> str:
    """The installed version. Looked up when first asked: importlib.metadata costs
    ~65 ms of every command's start, and most commands never need it."""
    from importlib import metadata

    try:
        return metadata.version("reclo")
    except metadata.PackageNotFoundError:  # running from a source tree that was not installed
        return "0.0.0"
