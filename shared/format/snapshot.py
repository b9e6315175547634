"""Snapshots and trees: what a backup recorded.

A snapshot is a small encrypted JSON object (`snapshots/<id>`) that names its root tree.
Trees are blobs of type *tree*, one per directory, stored in packs like data: each is
the canonical JSON of the directory's entries (sorted by name, fixed key order, no
whitespace), and its id is the keyed hash of that JSON. An unchanged directory therefore
produces the same tree blob again, which is deduplicated like any chunk: a daily backup
of a large, mostly unchanged tree stores only the trees on the paths to what changed.

The root tree has one entry per source: a folder source is a `dir` entry (named after
the folder), an image source an `image` entry. atime is not recorded by default: reading
a file changes it, which would make every tree differ from the previous one.

Names and link targets are text when they are valid UTF-8 (`name`, `target`) and
base64 of the raw bytes otherwise (`name_raw`, `target_raw`), so any Linux filename
survives a round trip. In memory they are `str`, with undecodable bytes carried as
surrogate escapes (as os.fsdecode does).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, NamedTuple

from .constants import CHUNK_ID_SIZE, FORMAT_VERSION
from .crypto import b64, unb64
from .errors import FormatError

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
IMAGE = "image"
NODE_TYPES = (FILE, DIR, SYMLINK, IMAGE)

FULL = "full"
INCREMENTAL = "incremental"


class ChunkRef(NamedTuple):
    """One stretch of a file's content: a stored chunk, or a hole (id None) of zeros."""

    id: bytes | None
    length: int

    @property
    def is_hole(self) -> bool:
        return self.id is None


def append_ref(content: list[ChunkRef], ref: ChunkRef) -> None:
    """Append, merging consecutive holes (a hole run is one entry, whatever its length)."""
    if ref.id is None and content and content[-1].id is None:
        content[-1] = ChunkRef(None, content[-1].length + ref.length)
    else:
        content.append(ref)


def name_bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _put_text(doc: dict, key: str, value: str) -> None:
    raw = name_bytes(value)
    try:
        doc[key] = raw.decode("utf-8")
    except UnicodeDecodeError:
        doc[key + "_raw"] = b64(raw)


def _get_text(doc: dict, key: str) -> str | None:
    if key in doc:
        value = doc[key]
        if not isinstance(value, str):
            raise FormatError(f"{key} must be a string")
        return value
    if key + "_raw" in doc:
        return unb64(doc[key + "_raw"]).decode("utf-8", "surrogateescape")
    return None


@dataclass(slots=True)
class Node:
    name: str
    type: str
    mode: int = 0  # permission bits, st_mode & 0o7777 (setuid, setgid, sticky included)
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    atime_ns: int | None = None
    inode: int = 0
    dev: int = 0
    size: int = 0  # bytes of content (file, image); length of the target (symlink)
    target: str | None = None  # symlink
    content: list[ChunkRef] | None = None  # file, image
    subtree: bytes | None = None  # dir
    # file, image: the compression dictionary its chunks were stored with, if any. Readers
    # don't need it (each blob names its own); the next backup of the file reuses it.
    dictionary: bytes | None = None

    def to_json(self) -> dict:
        doc: dict[str, Any] = {}
        _put_text(doc, "name", self.name)
        doc["type"] = self.type
        doc.update(mode=self.mode, uid=self.uid, gid=self.gid, mtime_ns=self.mtime_ns, ctime_ns=self.ctime_ns)
        if self.atime_ns is not None:
            doc["atime_ns"] = self.atime_ns
        doc.update(inode=self.inode, dev=self.dev, size=self.size)
        if self.target is not None:
            _put_text(doc, "target", self.target)
        if self.content is not None:
            doc["content"] = [[None if r.id is None else r.id.hex(), r.length] for r in self.content]
        if self.subtree is not None:
            doc["subtree"] = self.subtree.hex()
        if self.dictionary is not None:
            doc["dictionary"] = self.dictionary.hex()
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> Node:
        if not isinstance(doc, dict):
            raise FormatError("a tree node must be a JSON object")
        try:
            name = _get_text(doc, "name")
            if name is None:
                raise FormatError("tree node without a name")
            node_type = doc["type"]
            if node_type not in NODE_TYPES:
                raise FormatError(f"unknown node type {node_type!r}")
            content = None
            if "content" in doc:
                content = [ChunkRef(_chunk_id(i), _non_negative(n)) for i, n in doc["content"]]
            node = cls(
                name=name,
                type=node_type,
                mode=int(doc.get("mode", 0)),
                uid=int(doc.get("uid", 0)),
                gid=int(doc.get("gid", 0)),
                mtime_ns=int(doc.get("mtime_ns", 0)),
                ctime_ns=int(doc.get("ctime_ns", 0)),
                atime_ns=None if doc.get("atime_ns") is None else int(doc["atime_ns"]),
                inode=int(doc.get("inode", 0)),
                dev=int(doc.get("dev", 0)),
                size=_non_negative(doc.get("size", 0)),
                target=_get_text(doc, "target"),
                content=content,
                subtree=None if doc.get("subtree") is None else _chunk_id(doc["subtree"]),
                dictionary=None if doc.get("dictionary") is None else _chunk_id(doc["dictionary"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"tree node does not parse: {e!r}") from None
        if node.type == SYMLINK and node.target is None:
            raise FormatError(f"symlink {node.name!r} has no target")
        if node.type == DIR and node.subtree is None:
            raise FormatError(f"directory {node.name!r} has no subtree")
        if node.type in (FILE, IMAGE):
            if node.content is None:
                raise FormatError(f"{node.type} {node.name!r} has no content list")
            if sum(r.length for r in node.content) != node.size:
                raise FormatError(f"{node.type} {node.name!r}: content lengths do not add up to its size")
        return node


def _chunk_id(text: Any) -> bytes | None:
    if text is None:
        return None
    raw = bytes.fromhex(text)
    if len(raw) != CHUNK_ID_SIZE:
        raise FormatError(f"id {text!r} is not {CHUNK_ID_SIZE} bytes")
    return raw


def _non_negative(value: Any) -> int:
    n = int(value)
    if n < 0:
        raise FormatError("negative length")
    return n


@dataclass
class Tree:
    nodes: list[Node] = field(default_factory=list)

    def encode(self) -> bytes:
        """Canonical bytes: equal trees give equal bytes, hence equal blob ids."""
        nodes = sorted(self.nodes, key=lambda n: name_bytes(n.name))
        doc = {"version": FORMAT_VERSION, "nodes": [n.to_json() for n in nodes]}
        return json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> Tree:
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise FormatError(f"tree is not JSON: {e}") from None
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
            raise FormatError("unsupported tree version")
        nodes = doc.get("nodes")
        if not isinstance(nodes, list):
            raise FormatError("tree without a node list")
        return cls([Node.from_json(n) for n in nodes])

    def find(self, name: str) -> Node | None:
        for n in self.nodes:
            if n.name == name:
                return n
        return None


@dataclass
class SourceInfo:
    name: str  # its entry in the root tree
    path: str  # where it was read from, as given by the user
    kind: str  # "folder" | "image"


@dataclass
class SnapshotStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    images: int = 0
    bytes: int = 0  # logical size of all files and images
    bytes_read: int = 0  # what was actually read (unchanged files in an incremental are not)
    new_bytes: int = 0  # plaintext bytes of blobs this backup added to the repository
    stored_bytes: int = 0  # bytes of packs this backup uploaded
    chunks: int = 0  # data chunks referenced
    new_chunks: int = 0  # data chunks this backup added
    hole_bytes: int = 0
    duration_s: float = 0.0
    warnings: int = 0

    @classmethod
    def from_json(cls, doc: dict) -> SnapshotStats:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})


@dataclass
class Snapshot:
    time: datetime
    host: str
    kind: str  # FULL | INCREMENTAL
    tree: bytes  # root tree id
    sources: list[SourceInfo]
    parent: str | None = None  # the snapshot an incremental reused metadata from
    tags: list[str] = field(default_factory=list)
    stats: SnapshotStats = field(default_factory=SnapshotStats)

    def encode(self) -> bytes:
        doc = {
            "version": FORMAT_VERSION,
            "time": self.time.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "host": self.host,
            "kind": self.kind,
            "parent": self.parent,
            "tags": list(self.tags),
            "sources": [asdict(s) for s in self.sources],
            "tree": self.tree.hex(),
            "stats": asdict(self.stats),
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> Snapshot:
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
                raise FormatError("unsupported snapshot version")
            if doc["kind"] not in (FULL, INCREMENTAL):
                raise FormatError(f"unknown snapshot kind {doc['kind']!r}")
            tree = _chunk_id(doc["tree"])
            if tree is None:
                raise FormatError("snapshot without a tree")
            return cls(
                time=datetime.strptime(doc["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc),
                host=str(doc["host"]),
                kind=doc["kind"],
                tree=tree,
                sources=[SourceInfo(str(s["name"]), str(s["path"]), str(s["kind"])) for s in doc["sources"]],
                parent=doc.get("parent"),
                tags=[str(t) for t in doc.get("tags", [])],
                stats=SnapshotStats.from_json(doc.get("stats", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"snapshot does not parse: {e!r}") from None
