"""Key slots as stored, the key a passphrase slot is wrapped with (scrypt), and deriving
it ahead of need.

scrypt takes ~0.2 s on purpose, and a command used to start it only once it had loaded
everything and read the key slot: ~0.3 s into a backup or a restore, after the imports.
A command that can tell early where the repository is and what the passphrase is (a
local folder, RECLO_PASSPHRASE or the secrets file: clients/agent/ahead.py) starts the
derivation in a thread while the program loads; scrypt lets go of the interpreter, so the
two overlap, and opening the repository later takes the key derived. Light on purpose: it
is imported before the rest of the program.
"""

from __future__ import annotations

import base64
import json
import threading
import unicodedata
from dataclasses import dataclass

from .constants import FORMAT_VERSION, KEY_SIZE, SCRYPT_N, SCRYPT_P, SCRYPT_R
from .errors import FormatError

# The most memory a slot's scrypt may take (128 * n * r bytes): twice the largest slots
# ReClo ever made (n = 2^17, r = 8: 128 MiB). Within the other bounds a hostile slot could
# otherwise ask for 16 GiB.
MAX_MEMORY = 256 * 1024 * 1024


@dataclass(frozen=True)
class ScryptParams:
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    def check(self) -> None:
        # Bounds keep a hostile key file from making us allocate gigabytes.
        if not all(type(v) is int for v in (self.n, self.r, self.p)):
            raise FormatError(f"scrypt parameters must be integers: n={self.n!r}, r={self.r!r}, p={self.p!r}")
        if not (2 <= self.n <= 2**22 and self.n & (self.n - 1) == 0):
            raise FormatError(f"scrypt n={self.n} must be a power of two in [2, 2**22]")
        if not (1 <= self.r <= 32 and 1 <= self.p <= 16):
            raise FormatError(f"scrypt r={self.r}, p={self.p} out of range")
        if 128 * self.n * self.r > MAX_MEMORY:
            raise FormatError(f"scrypt n={self.n}, r={self.r} would need more than {MAX_MEMORY >> 20} MiB")


def check_version(doc: object) -> None:
    """A sealed document or a key slot must be a JSON object of this format's version."""
    if not isinstance(doc, dict):
        raise FormatError("expected a JSON object")
    version = doc.get("version")
    if version != FORMAT_VERSION:
        raise FormatError(f"unsupported format version {version!r} (this reader knows {FORMAT_VERSION})")


def decode_key_slot(data: bytes) -> dict:
    """A key slot object (docs/format.md §2), of a kind this reader knows."""
    try:
        slot = json.loads(data)
    except (ValueError, RecursionError) as e:  # RecursionError: nested past the parser's depth
        raise FormatError(f"key slot is not JSON: {e}") from None
    check_version(slot)
    if slot.get("kind") not in ("passphrase", "kms"):
        raise FormatError(f"unknown key slot kind {slot.get('kind')!r}")
    return slot


def passphrase_slot(slot: dict) -> tuple[bytes, ScryptParams, bytes]:
    """The salt, the scrypt parameters and the wrapped key of a passphrase key slot,
    checked before anything is derived; FormatError if they are not what a slot holds."""
    try:
        kdf = slot["kdf"]
        if kdf["name"] != "scrypt":
            raise FormatError(f"unknown key derivation {kdf['name']!r}")
        params = ScryptParams(n=kdf["n"], r=kdf["r"], p=kdf["p"])
        salt = base64.b64decode(kdf["salt"].encode("ascii"), validate=True)
        wrapped = base64.b64decode(slot["wrapped"].encode("ascii"), validate=True)
    except (KeyError, TypeError, ValueError, AttributeError, UnicodeEncodeError) as e:
        raise FormatError(f"invalid passphrase key slot: {e!r}") from None
    params.check()
    return salt, params, wrapped


def passphrase_key(passphrase: str, salt: bytes, params: ScryptParams) -> bytes:
    """What scrypt derives from the passphrase and the salt: the one derived ahead for the
    same inputs if there is one (waiting for it to finish), else derived now."""
    with _lock:
        ahead = _ahead.get((passphrase, salt, params))
    if ahead is not None:
        ahead.done.wait()
        if ahead.key is not None:
            return ahead.key
    return _derive(passphrase, salt, params)  # none ahead, or it failed: its error, raised here


def derive_ahead(passphrase: str, salt: bytes, params: ScryptParams) -> None:
    """Start deriving the key in a background thread, for passphrase_key to take later.
    Raises FormatError for parameters out of bounds (nothing is started then)."""
    params.check()
    inputs = (passphrase, salt, params)
    with _lock:
        if inputs in _ahead:
            return
        ahead = _ahead[inputs] = _Ahead()
    try:
        threading.Thread(target=ahead.run, args=inputs, name="reclo-key-ahead", daemon=True).start()
    except BaseException:  # no thread (RuntimeError at the limit of threads): nothing ahead
        with _lock:
            del _ahead[inputs]
        ahead.done.set()
        raise


def _derive(passphrase: str, salt: bytes, params: ScryptParams) -> bytes:
    params.check()
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt  # here: not on the early path

    # NFC so that the same passphrase typed on Windows and on a Mac gives the same bytes.
    secret = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    return Scrypt(salt=salt, length=KEY_SIZE, n=params.n, r=params.r, p=params.p).derive(secret)


class _Ahead:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.key: bytes | None = None

    def run(self, passphrase: str, salt: bytes, params: ScryptParams) -> None:
        try:
            self.key = _derive(passphrase, salt, params)
        except Exception:  # noqa: BLE001 - derived again by passphrase_key, which raises it there
            pass
        finally:
            self.done.set()


# Keys derived ahead, by their inputs. A process derives one or two (the repository it
# was started for), and keeps them as it keeps the master key they open.
_ahead: dict[tuple[str, bytes, ScryptParams], _Ahead] = {}
_lock = threading.Lock()
