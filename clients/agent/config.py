"""The agent's configuration: one TOML file (docs/agent.md has the reference).

Where it lives: `--config`, else `RECLO_AGENT_CONFIG`, else `/etc/reclo/agent.toml` on
Linux and `%ProgramData%\\ReClo\\agent.toml` on Windows. The secrets (agent key,
passphrase) are not in it: they live in a separate file beside it (secretfile.py), so the
configuration can be shown to a colleague or kept in version control.

Every value is checked when the file is read, and a mistake names the file and the key:
an agent that would fail at 2 a.m. should fail when the administrator starts it instead.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import tomllib
from dataclasses import dataclass, field
from datetime import time, timedelta
from pathlib import Path

from shared.format.in_place import DEFAULT_IN_PLACE_MIN_SIZE, DEFAULT_IN_PLACE_PATTERNS

from .exits import ConfigError

FOLDER = "folder"
IMAGE = "image"

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# The rhythm: a full backup once a week, an incremental every day in between.
DEFAULT_FULL_WEEKDAY = 6  # Sunday: the quietest day on most business servers
DEFAULT_TIME = time(1, 0)  # 01:00 local time, after the working day and before the nightly jobs
DEFAULT_INCREMENTAL_EVERY = timedelta(days=1)
# Shorter than this, a backup would still be reading when the next one is due.
MIN_INCREMENTAL_EVERY = timedelta(minutes=15)
# After a failed scheduled backup, try again this much later (or at the next slot if sooner):
# a network outage is usually over in minutes, and retrying at once would hammer the server.
DEFAULT_RETRY_AFTER = timedelta(minutes=15)
# Two packs uploading while the next ones are filled hide the round trip to S3; each one
# costs a pack (32 MiB) of memory.
DEFAULT_UPLOAD_CONCURRENCY = 2
MAX_UPLOAD_CONCURRENCY = 16
# A pre command such as `wbadmin start backup` of a large server takes hours; one that
# hangs for longer than this is stuck.
DEFAULT_HOOK_TIMEOUT = timedelta(hours=6)

SECRETS_NAME = "agent-secrets.json"

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?(?:/s)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_NAMED_INTERVALS = {"hourly": timedelta(hours=1), "daily": timedelta(days=1)}


def default_config_path() -> Path:
    env = os.environ.get("RECLO_AGENT_CONFIG")
    if env:
        return Path(env)
    if sys.platform == "win32":
        return Path(os.environ.get("ProgramData", r"C:\ProgramData")) / "ReClo" / "agent.toml"
    return Path("/etc/reclo/agent.toml")


def _default_state_dir(config_path: Path) -> Path:
    # systemd's StateDirectory= tells the service where it may write (ProtectSystem=strict)
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if sys.platform == "win32":
        return config_path.parent / "state"
    if config_path == Path("/etc/reclo/agent.toml"):
        return Path("/var/lib/reclo-agent")  # /etc is read-only for the service
    return config_path.parent / "state"


@dataclass(frozen=True)
class SourceConfig:
    path: str
    kind: str = FOLDER  # FOLDER | IMAGE
    pre: str | list[str] | None = None  # run before the backup reads anything
    post: str | list[str] | None = None  # run after it, whatever happened


@dataclass(frozen=True)
class Schedule:
    full_weekday: int = DEFAULT_FULL_WEEKDAY  # 0 = Monday, as datetime.weekday()
    at: time = DEFAULT_TIME  # local time of the weekly full and of the first incremental of a day
    incremental_every: timedelta = DEFAULT_INCREMENTAL_EVERY
    retry_after: timedelta = DEFAULT_RETRY_AFTER


@dataclass(frozen=True)
class Upload:
    bandwidth_limit: int | None = None  # bytes per second; None: as fast as the link goes
    concurrency: int = DEFAULT_UPLOAD_CONCURRENCY


@dataclass(frozen=True)
class InPlace:
    """Files their programs rewrite in place (databases, VM disks): cut into fixed chunks."""

    patterns: tuple[str, ...] = DEFAULT_IN_PLACE_PATTERNS
    min_size: int = DEFAULT_IN_PLACE_MIN_SIZE


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    exists: bool = False
    server: str | None = None
    repository: str | None = None  # "file:///mnt/usb/reclo": a local folder instead of the server
    host: str = field(default_factory=socket.gethostname)
    sources: tuple[SourceConfig, ...] = ()
    excludes: tuple[str, ...] = ()
    schedule: Schedule = Schedule()
    upload: Upload = Upload()
    in_place: InPlace = InPlace()
    hook_timeout: timedelta = DEFAULT_HOOK_TIMEOUT
    use_vss: bool = True  # Windows: read folders from a VSS shadow copy
    secrets_path: Path = Path()
    state_dir: Path = Path()
    log_file: Path | None = None


def load(path: Path | None = None) -> AgentConfig:
    """Read the configuration; a missing file gives the defaults (register creates it)."""
    path = Path(path) if path is not None else default_config_path()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return AgentConfig(path=path, secrets_path=path.parent / SECRETS_NAME,
                           state_dir=_default_state_dir(path))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    return parse(doc, path)


def parse(doc: dict, path: Path) -> AgentConfig:
    where = _Where(path)
    known = {"server", "repository", "host", "sources", "excludes", "schedule", "upload", "in_place",
             "hook_timeout", "use_vss", "secrets", "state_dir", "log_file"}
    where.no_unknown(doc, known, "")
    server = where.optional_str(doc, "server")
    if server is not None:
        server = server.rstrip("/")
        if not re.match(r"^https?://[^/\s]+", server):
            raise where.error("server", "must be an http:// or https:// URL")
    repository = where.optional_str(doc, "repository")
    if repository is not None:
        repository_folder(repository, where)  # checked now, used later

    sources = []
    raw_sources = doc.get("sources", [])
    if not isinstance(raw_sources, list):
        raise where.error("sources", "must be an array of tables ([[sources]])")
    for i, item in enumerate(raw_sources):
        key = f"sources[{i}]"
        if not isinstance(item, dict):
            raise where.error(key, "must be a table with a path")
        where.no_unknown(item, {"path", "type", "pre", "post"}, key + ".")
        source_path = where.optional_str(item, "path", key + ".path")
        if not source_path:
            raise where.error(key + ".path", "is required")
        kind = item.get("type", FOLDER)
        if kind not in (FOLDER, IMAGE):
            raise where.error(key + ".type", f"must be {FOLDER!r} or {IMAGE!r}")
        sources.append(SourceConfig(source_path, kind, where.command(item, "pre", key),
                                    where.command(item, "post", key)))

    excludes = doc.get("excludes", [])
    if not isinstance(excludes, list) or not all(isinstance(x, str) and x for x in excludes):
        raise where.error("excludes", "must be a list of glob patterns")

    schedule = _schedule(doc.get("schedule", {}), where)
    upload = _upload(doc.get("upload", {}), where)
    in_place = _in_place(doc.get("in_place", {}), where)
    hook_timeout = where.duration(doc, "hook_timeout", DEFAULT_HOOK_TIMEOUT)
    use_vss = doc.get("use_vss", True)
    if not isinstance(use_vss, bool):
        raise where.error("use_vss", "must be true or false")

    host = where.optional_str(doc, "host") or socket.gethostname()
    secrets = where.optional_str(doc, "secrets")
    state_dir = where.optional_str(doc, "state_dir")
    log_file = where.optional_str(doc, "log_file")
    return AgentConfig(
        path=path,
        exists=True,
        server=server,
        repository=repository,
        host=host,
        sources=tuple(sources),
        excludes=tuple(excludes),
        schedule=schedule,
        upload=upload,
        in_place=in_place,
        hook_timeout=hook_timeout,
        use_vss=use_vss,
        secrets_path=_relative_to(path, secrets) if secrets else path.parent / SECRETS_NAME,
        state_dir=_relative_to(path, state_dir) if state_dir else _default_state_dir(path),
        log_file=_relative_to(path, log_file) if log_file else None,
    )


def _schedule(doc, where: _Where) -> Schedule:
    if not isinstance(doc, dict):
        raise where.error("schedule", "must be a table")
    where.no_unknown(doc, {"full_day", "time", "incremental", "retry_after"}, "schedule.")
    weekday = DEFAULT_FULL_WEEKDAY
    if "full_day" in doc:
        name = str(doc["full_day"]).strip().lower()
        matches = [i for i, d in enumerate(WEEKDAYS) if len(name) >= 3 and d.startswith(name)]
        if len(matches) != 1:
            raise where.error("schedule.full_day", "must be a weekday such as 'sunday'")
        weekday = matches[0]
    at = DEFAULT_TIME
    if "time" in doc:
        value = doc["time"]
        if isinstance(value, time):  # TOML local time: time = 01:30:00
            at = value
        else:
            found = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", str(value))
            if not found or int(found[1]) > 23 or int(found[2]) > 59:
                raise where.error("schedule.time", "must be a time of day such as '01:30'")
            at = time(int(found[1]), int(found[2]))
    every = DEFAULT_INCREMENTAL_EVERY
    if "incremental" in doc:
        value = str(doc["incremental"]).strip().lower()
        every = _NAMED_INTERVALS.get(value) or where.duration(doc, "incremental", None, "schedule.incremental")
        if every < MIN_INCREMENTAL_EVERY:
            raise where.error("schedule.incremental", f"must be at least {MIN_INCREMENTAL_EVERY}")
    retry = where.duration(doc, "retry_after", DEFAULT_RETRY_AFTER, "schedule.retry_after")
    return Schedule(weekday, at, every, retry)


def _upload(doc, where: _Where) -> Upload:
    if not isinstance(doc, dict):
        raise where.error("upload", "must be a table")
    where.no_unknown(doc, {"bandwidth_limit", "concurrency"}, "upload.")
    limit = None
    if doc.get("bandwidth_limit") not in (None, 0, "", "0", "none", "unlimited"):
        limit = parse_size(doc["bandwidth_limit"])
        if limit is None or limit < 1024:
            raise where.error("upload.bandwidth_limit", "must be a rate such as '4 MiB' per second (at least 1 KiB)")
    concurrency = doc.get("concurrency", DEFAULT_UPLOAD_CONCURRENCY)
    if not isinstance(concurrency, int) or not 1 <= concurrency <= MAX_UPLOAD_CONCURRENCY:
        raise where.error("upload.concurrency", f"must be a whole number from 1 to {MAX_UPLOAD_CONCURRENCY}")
    return Upload(limit, concurrency)


def _in_place(doc, where: _Where) -> InPlace:
    if not isinstance(doc, dict):
        raise where.error("in_place", "must be a table")
    where.no_unknown(doc, {"patterns", "min_size"}, "in_place.")
    patterns = doc.get("patterns", list(DEFAULT_IN_PLACE_PATTERNS))
    if not isinstance(patterns, list) or not all(isinstance(x, str) and x and "/" not in x for x in patterns):
        raise where.error("in_place.patterns", "must be a list of file name patterns such as '*.mdf' (no '/')")
    min_size = parse_size(doc.get("min_size", DEFAULT_IN_PLACE_MIN_SIZE))
    if min_size is None:
        raise where.error("in_place.min_size", "must be a size such as '1 MiB'")
    return InPlace(tuple(patterns), min_size)


def parse_size(value) -> int | None:
    """Bytes from 1048576, '1 MiB', '1MB', '800k' (k/M/G/T are powers of 1024 either way:
    a bandwidth limit is a ceiling, not an invoice)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    found = _SIZE.match(str(value))
    if not found:
        return None
    factor = 1024 ** " kmgt".index(found[2].lower() or " ")
    return int(float(found[1]) * factor)


def parse_duration(value) -> timedelta | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return timedelta(seconds=value)
    found = _DURATION.match(str(value))
    if not found:
        return None
    return timedelta(seconds=int(found[1]) * _DURATION_UNITS[found[2].lower()])


def repository_folder(url: str, where: _Where | None = None) -> Path:
    """The folder of a `file://` repository URL (a USB disk, a NAS mount)."""
    if url.startswith("file://"):
        rest = url[len("file://"):]
        if rest.startswith("/") or re.match(r"^[A-Za-z]:[/\\]", rest):
            return Path(rest)
    if where is not None:
        raise where.error("repository", "must be a file:// URL of a folder, such as file:///mnt/usb/reclo")
    raise ConfigError(f"{url!r} is not a file:// URL of a folder, such as file:///mnt/usb/reclo")


def _relative_to(config_path: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else config_path.parent / p


class _Where:
    """Error messages that name the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key} {message}")

    def no_unknown(self, doc: dict, known: set[str], prefix: str) -> None:
        unknown = sorted(set(doc) - known)
        if unknown:
            raise self.error(prefix + unknown[0], f"is not a known setting (known: {', '.join(sorted(known))})")

    def optional_str(self, doc: dict, key: str, name: str | None = None) -> str | None:
        value = doc.get(key)
        if value is not None and not isinstance(value, str):
            raise self.error(name or key, "must be a string")
        return value

    def command(self, doc: dict, key: str, prefix: str) -> str | list[str] | None:
        value = doc.get(key)
        if value is None:
            return None
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value
        raise self.error(f"{prefix}.{key}", "must be a command line (string) or an argument list")

    def duration(self, doc: dict, key: str, default, name: str | None = None) -> timedelta:
        if key not in doc:
            if default is None:
                raise self.error(name or key, "is required")
            return default
        value = parse_duration(doc[key])
        if value is None:
            raise self.error(name or key, "must be a duration such as '30m', '6h' or '1d'")
        return value


# --- writing the few values `register` sets ----------------------------------------------


def set_top_level(path: Path, values: dict[str, str]) -> None:
    """Set top-level string keys in the TOML file, keeping everything else as written
    (comments included); creates the file from a short template if it is missing."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = [
            "# ReClo Backup Manager (docs/agent.md has every setting).",
            "",
            "# [[sources]]",
            '# path = "/srv/data"',
            "",
            "# [schedule]",
            '# full_day = "sunday"',
            '# time = "01:00"',
            '# incremental = "daily"',
        ]
    first_table = next((i for i, line in enumerate(lines) if line.lstrip().startswith("[")), len(lines))
    for key, value in values.items():
        rendered = f"{key} = {_toml_string(value)}"
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for i in range(first_table):
            if pattern.match(lines[i]):
                lines[i] = rendered
                break
        else:
            lines.insert(0, rendered)
            first_table += 1
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)  # never leave a file the agent cannot read
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
