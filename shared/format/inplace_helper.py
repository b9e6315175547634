"""The changed chunks of a file rewritten in place, found and compressed in a helper process.

An incremental backup of a database or a disk image that changed in a few places still
reads the whole file to find them: the benchmark's 307 MiB database is 10,000 chunks of
32 KiB, of which a day changes about a thousand. In the backup's own process that work
(reading, hashing, compressing with the file's dictionary) competes for the interpreter
with the walk of the other folders, at every chunk; the walk, which is what an
incremental waits for, took 0.8-1.0 s longer beside it (docs/BENCHMARKS.md, "The big
files of an incremental in a helper process").

A helper process has an interpreter of its own. It gets the file's descriptor over a
Unix socket (SCM_RIGHTS: it reads the very file the backup opened), the ids of the
chunks the file's last backup had, and the file's dictionary; it cuts the file with the
same ImageChunker, hashes every chunk, and for a chunk not among the known ones sends
back what compression.encode makes of it. The backup seals those into its packs (it
alone holds the encryption key: the helper gets the key for chunk ids only) and takes
the others as they were. Only files rewritten in place with a usable parent take this
way, so the result is the same chunk list, the same blobs, as in the backup's process.

A helper that dies, or cannot start, makes the rest of the file be read in the backup's
process from where it stopped, and no helper is used again in that backup.
"""

from __future__ import annotations

import logging
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .chunker import ImageChunker, Piece
from .compression import encode
from .ids import chunk_id
from .dictionary import Dictionary, DictionaryEncoder

log = logging.getLogger(__name__)

# Helpers one backup runs at most. A second (the disk image beside the database) made
# the day incremental ~6 % faster again but costs ~21 MiB more, which took the backup's
# memory past restic's (docs/BENCHMARKS.md).
HELPERS = 1
AVAILABLE = hasattr(socket, "send_fds") and hasattr(socket, "AF_UNIX") and not getattr(sys, "frozen", False)

_KEY_SIZE = 32
_ID_SIZE = 32
_REQUEST = struct.Struct("!QQII")  # file size, chunk size, known ids, dictionary bytes
# A frame: its kind, the records that follow, bytes the helper read since the last frame,
# bytes of encoded chunks after the records. Kinds: records; the file's last records; the
# file could not be read (an OSError: its errno in the count, then a message of `read` bytes).
_FRAME = struct.Struct("!BIQQ")
_RECORDS, _LAST, _FAILED = 1, 2, 3
_RECORD = struct.Struct("!QQB32sI")  # offset, length, what it is, id, length of its encoding
_HOLE, _KNOWN, _NEW = 0, 1, 2
_BATCH = 256  # records per frame at most
_BATCH_ENCODED = 1 << 20  # ... and encoded bytes, roughly
# What the backup accepts from a helper: a frame's encodings (a batch's, plus the chunk
# that passed it, with its encoding byte and dictionary id: _ENCODING_OVERHEAD), an
# error's message, and how long a frame may take (256 big chunks from a slow disk).
_ENCODING_OVERHEAD = 64
_MAX_MESSAGE = 1 << 16
_FRAME_TIMEOUT = 600.0


class HelperLost(Exception):
    """The helper process died or said something it should not have."""


class ReadError(OSError):
    """The helper could not read the file (the file's error, not the helper's)."""


class _Helper:
    """One helper process and the socket to it."""

    def __init__(self, id_key: bytes):
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        root = str(Path(__file__).resolve().parents[2])  # this very code, however installed
        code = (f"import sys; sys.path.insert(0, {root!r}); "
                f"from shared.format.inplace_helper import serve; serve({child.fileno()})")
        try:
            # -I: no current directory, no PYTHON* variables, no user site in its path
            self.process = subprocess.Popen([sys.executable, "-I", "-c", code], pass_fds=[child.fileno()],
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.sock = parent
        self.reader = parent.makefile("rb")
        try:
            parent.settimeout(_FRAME_TIMEOUT)  # a helper that hangs is one that is lost
            parent.sendall(id_key)
        except BaseException:
            self.close()
            raise

    def request(self, fd: int, size: int, chunk: int, known: frozenset[bytes], dictionary: Dictionary | None) -> None:
        body = b"".join(known)
        if dictionary is not None:
            body += dictionary.id + dictionary.data
        header = _REQUEST.pack(size, chunk, len(known), 0 if dictionary is None else len(dictionary.data))
        try:
            socket.send_fds(self.sock, [header], [fd])
            self.sock.sendall(body)
        except OSError as e:
            raise HelperLost(f"cannot reach the helper: {e}") from None

    def frames(self, chunk: int) -> Iterator[tuple[int, list[tuple[int, int, int, bytes, bytes]]]]:
        """(bytes read, records with their encodings) until the file's last frame;
        ReadError if it could not read the file, HelperLost if it went away."""
        while True:
            kind, count, read, encoded = _FRAME.unpack(self._read(_FRAME.size))
            if kind == _FAILED and read <= _MAX_MESSAGE:
                raise ReadError(count, self._read(read).decode("utf-8", "replace"))
            if kind not in (_RECORDS, _LAST) or count > _BATCH \
                    or encoded > _BATCH_ENCODED + chunk + _ENCODING_OVERHEAD:
                raise HelperLost(f"unexpected frame {kind} of {count} records, {encoded} bytes")
            body = self._read(count * _RECORD.size + encoded)
            records = []
            at = count * _RECORD.size
            for i in range(count):
                offset, length, what, blob_id, size = _RECORD.unpack_from(body, i * _RECORD.size)
                if what not in (_HOLE, _KNOWN, _NEW) or (what == _NEW) != (size > 0):
                    raise HelperLost(f"a record of kind {what} with {size} encoded bytes")
                records.append((offset, length, what, blob_id, body[at:at + size]))
                at += size
            if at != len(body):
                raise HelperLost("a frame's encodings do not add up")
            yield read, records
            if kind == _LAST:
                return

    def _read(self, n: int) -> bytes:
        try:
            data = self.reader.read(n)
        except OSError as e:
            raise HelperLost(f"cannot hear the helper: {e}") from None
        if len(data) != n:
            raise HelperLost("the helper went away")
        return data

    def close(self) -> None:
        """Stops the helper, whatever it was doing (a thread waiting for its next frame
        hears the end of it); again: nothing."""
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed already
        self.reader.close()
        self.sock.close()
        self.process.wait()


SaveEncoded = Callable[[list[tuple[bytes, bytes, int]]], None]


class InPlaceHelpers:
    """The helper processes of one backup, started as files need them."""

    def __init__(self, id_key: bytes, limit: int = HELPERS):
        self.id_key = id_key
        self.limit = limit
        self.usable = AVAILABLE and limit > 0  # False after a helper failed: the rest is read here
        self.started = 0  # helpers started (the tests look)
        self._idle: list[_Helper] = []
        self._all: set = set()  # helpers running, and places held for those starting
        self._closed = False
        self._lock = threading.Lock()

    def pieces(self, f: BinaryIO, size: int, chunker: ImageChunker, known: frozenset[bytes],
               dictionary: DictionaryEncoder | None, save: SaveEncoded,
               on_read: Callable[[int], None] | None = None) -> Iterator[Piece]:
        """chunker.pieces(f, size), with every chunk as Piece(offset, length, None, id):
        those not in known were stored with save([(id, encoding, length), ...]) first.
        Holes stay Piece(offset, length, None). Close the iterator when done with it
        (a `with closing(...)`): that gives the helper back, or stops it half-way."""
        helper = self._take()
        if helper is None:  # none free, or none at all: read here
            yield from chunker.pieces(f, size, on_read)
            return
        done = 0  # where the pieces handed on end
        chunk = chunker.chunking.chunk_size(size)
        healthy = False
        try:
            try:
                helper.request(f.fileno(), size, chunk, known, None if dictionary is None else dictionary.dictionary)
                for read, records in helper.frames(chunk):
                    if on_read is not None and read:
                        on_read(read)
                    pieces, end = [], done
                    for offset, length, what, blob_id, _ in records:
                        # Where the chunker cuts, as here: aligned whole chunks, one short
                        # one where the file ends, holes of whole chunks.
                        if offset != end or offset % chunk or length <= 0 or offset + length > size \
                                or (what != _HOLE and length > chunk) or (what == _KNOWN and blob_id not in known):
                            raise HelperLost(f"a piece at {offset} of {length} bytes ({what}), expected {end}")
                        pieces.append(Piece(offset, length, None, None if what == _HOLE else blob_id))
                        end = offset + length
                    save([(blob_id, encoding, length) for _, length, what, blob_id, encoding in records
                          if what == _NEW])
                    done = end  # a whole frame checked: its pieces are handed on
                    yield from pieces
                healthy = True  # done < size: the file shrank while it was read, as here
            except ReadError:
                healthy = True  # it said so, and waits for the next file
                raise
        except HelperLost as e:
            log.warning("in-place helper lost, reading the rest of the file here: %s", e)
            self.usable = False
            self._give_back(helper, healthy=False)  # stopped before reading: it shares the file
            helper = None
            if done < size and done % chunk == 0:  # else the file ended at a short chunk
                yield from chunker.pieces(f, size, on_read, start=done)
        finally:
            if helper is not None:
                self._give_back(helper, healthy)

    def _take(self) -> _Helper | None:
        """A free helper, or a new one if fewer than limit run; None if neither (the
        file is read in the backup's process then: waiting for the helper would hold a
        worker the walk needs)."""
        with self._lock:
            if self._closed or not self.usable:
                return None
            if self._idle:
                return self._idle.pop()
            if len(self._all) >= self.limit:
                return None
            placeholder = object()
            self._all.add(placeholder)
        try:
            helper = _Helper(self.id_key)
        except Exception as e:
            log.warning("cannot start an in-place helper, reading here: %s", e)
            with self._lock:
                self._all.discard(placeholder)
                self.usable = False
            return None
        with self._lock:
            self._all.discard(placeholder)
            self._all.add(helper)
            closed = self._closed
        if closed:  # closed while it started
            self._give_back(helper, healthy=False)
            return None
        self.started += 1
        return helper

    def _give_back(self, helper: _Helper, healthy: bool) -> None:
        """A helper stopped half-way through a file (an error, a cancel) is not reused."""
        with self._lock:
            keep = healthy and not self._closed and helper in self._all
            if keep:
                self._idle.append(helper)
            else:
                self._all.discard(helper)
        if not keep:
            helper.close()

    def close(self) -> None:
        """Stops every helper, busy ones too (their files fall back to this process)."""
        with self._lock:
            self._closed = True
            helpers = [h for h in self._all if isinstance(h, _Helper)]
            self._all.clear()
            self._idle.clear()
        for helper in helpers:
            helper.close()


# --- the helper process ---------------------------------------------------------------


class _BackupGone(Exception):
    """The backup's end of the socket is closed: the helper's work is over."""


def serve(fd: int) -> None:
    """The helper's loop: a file at a time until the backup closes the socket."""
    # Ctrl-C reaches the whole process group: the backup decides, and stops its helpers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    dictionaries: dict[bytes, Dictionary] = {}  # the last one, loaded once for several files
    try:
        id_key = _receive(sock, _KEY_SIZE)
        while True:
            message, fds, _, _ = socket.recv_fds(sock, _REQUEST.size, 1)
            if not message or len(fds) != 1:
                return
            size, chunk, known_count, dictionary_size = _REQUEST.unpack(
                message + _receive(sock, _REQUEST.size - len(message)))
            with open(fds[0], "rb", buffering=0) as f:
                ids = _receive(sock, known_count * _ID_SIZE)
                known = {ids[i:i + _ID_SIZE] for i in range(0, len(ids), _ID_SIZE)}
                encoder = None
                if dictionary_size:
                    dictionary_id = _receive(sock, _ID_SIZE)
                    data = _receive(sock, dictionary_size)
                    if dictionary_id not in dictionaries:
                        dictionaries = {dictionary_id: Dictionary(dictionary_id, data)}
                    encoder = dictionaries[dictionary_id].encoder(chunk)
                _cut_file(sock, f, size, chunk, id_key, known, encoder)
    except (_BackupGone, ConnectionError):
        return


def _cut_file(sock: socket.socket, f: BinaryIO, size: int, chunk: int, id_key: bytes, known: set[bytes],
              encoder: DictionaryEncoder | None) -> None:
    read = 0

    def count(n: int) -> None:
        nonlocal read
        read += n

    records: list[bytes] = []
    encodings: list[bytes] = []
    encoded = 0
    try:
        for piece in ImageChunker(chunk).pieces(f, size, count):
            if piece.data is None:
                records.append(_RECORD.pack(piece.offset, piece.length, _HOLE, b"", 0))
            elif (blob_id := chunk_id(id_key, piece.data)) in known:
                records.append(_RECORD.pack(piece.offset, piece.length, _KNOWN, blob_id, 0))
            else:
                encoding = encode(piece.data, encoder)
                records.append(_RECORD.pack(piece.offset, piece.length, _NEW, blob_id, len(encoding)))
                encodings.append(encoding)
                encoded += len(encoding)
            if len(records) == _BATCH or encoded >= _BATCH_ENCODED:
                _send(sock, _FRAME.pack(_RECORDS, len(records), read, encoded), records, encodings)
                records, encodings, encoded, read = [], [], 0, 0
    except OSError as e:  # reading the file
        reason = (e.strerror or str(e)).encode()
        _send(sock, _FRAME.pack(_FAILED, e.errno or 0, len(reason), 0), [reason], [])
        return
    _send(sock, _FRAME.pack(_LAST, len(records), read, encoded), records, encodings)


def _send(sock: socket.socket, frame: bytes, records: list[bytes], encodings: list[bytes]) -> None:
    try:
        sock.sendall(b"".join([frame, *records, *encodings]))
    except OSError:
        raise _BackupGone from None


def _receive(sock: socket.socket, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        more = sock.recv(min(n - got, 1 << 20))
        if not more:
            raise _BackupGone
        parts.append(more)
        got += len(more)
    return b"".join(parts)
