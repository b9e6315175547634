"""Keys, chunk ids and authenticated encryption.

A repository has one master key made of two independent 32-byte keys:

- the *encryption key* (AES-256-GCM) seals every blob and every object;
- the *id key* keys BLAKE3 to derive chunk ids, so an id says nothing about the content to
  anyone without the key (the bucket's owner cannot test whether a known file is stored).

The master key is stored only wrapped, in key slots (`keys/<id>` objects): a
*passphrase* slot wraps it with a key derived by scrypt from the customer's passphrase; a
*kms* slot holds whatever a key-management service returned when asked to wrap it (the
format stores the KMS key id and the opaque bytes; the caller brings the KMS client).
Any one slot opens the repository.

Sealed bytes are ``nonce (12) | ciphertext | tag (16)``; the nonce is random for every
seal. The associated data names what the bytes are (a data blob with this id, the index,
a snapshot, ...), so a valid ciphertext moved to another place fails to decrypt.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .constants import (
    FORMAT_VERSION,
    KEY_SIZE,
    NONCE_SIZE,
    SCRYPT_SALT_SIZE,
    TAG_SIZE,
)
from .errors import DecryptionFailed, FormatError, WrongPassphrase
from .ids import chunk_id
from .kdf import ScryptParams, check_version as _check_version, passphrase_key, passphrase_slot

# Associated data, one per kind of sealed thing (docs/format.md lists them).
AAD_CONFIG = b"reclo/v1/config"
AAD_INDEX = b"reclo/v1/index"
AAD_SNAPSHOT = b"reclo/v1/snapshot"
AAD_PACK_HEADER = b"reclo/v1/pack-header"
AAD_KEY_SLOT = b"reclo/v1/key-slot"
AAD_DICTIONARY = b"reclo/v1/dictionary"


def blob_aad(type_name: str, blob_id: bytes) -> bytes:
    """A blob is bound to its type and id: swapping two blobs, even of one pack, fails."""
    return b"reclo/v1/blob/" + type_name.encode("ascii") + b"/" + blob_id


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as e:
        raise FormatError(f"invalid base64: {e}") from None


_ZEROS = memoryview(bytes(9 * 1024 * 1024))  # more than the largest chunk, sealed


def _zeros(n: int):
    return _ZEROS[:n] if n <= len(_ZEROS) else bytes(n)


class MasterKey:
    """The two secrets of a repository, and the operations that need them.

    Safe to use from several threads at once (the AES context is per thread).
    """

    __slots__ = ("encryption_key", "id_key", "_local")

    def __init__(self, encryption_key: bytes, id_key: bytes):
        if len(encryption_key) != KEY_SIZE or len(id_key) != KEY_SIZE:
            raise FormatError("master keys must be 32 bytes each")
        if encryption_key == id_key:
            raise FormatError("the encryption key and the id key must differ")
        self.encryption_key = encryption_key
        self.id_key = id_key
        self._local = threading.local()

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(KEY_SIZE), os.urandom(KEY_SIZE))

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        return chunk_id(self.id_key, data)

    def _aead(self) -> AESGCM:
        aead = getattr(self._local, "aead", None)
        if aead is None:
            aead = self._local.aead = AESGCM(self.encryption_key)
        return aead

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead().encrypt(nonce, plaintext, aad)

    def seal_into(self, plaintext: bytes, aad: bytes, out: bytearray) -> int:
        """What seal returns, appended to out and encrypted in place there: no
        ciphertext apart and no copy of it (a backup seals ~half a GiB per GiB read,
        and each fresh buffer costs a page fault per 4 KiB). Returns the length appended."""
        nonce = os.urandom(NONCE_SIZE)
        start = len(out)
        length = NONCE_SIZE + len(plaintext) + TAG_SIZE
        out += nonce
        out += _zeros(length - NONCE_SIZE)  # room for the ciphertext and tag
        try:
            with memoryview(out) as view:
                self._aead().encrypt_into(nonce, plaintext, aad, view[start + NONCE_SIZE:])
        except BaseException:
            del out[start:]
            raise
        return length

    def open(self, sealed: bytes | memoryview, aad: bytes) -> bytes:
        if len(sealed) < NONCE_SIZE + TAG_SIZE:
            raise DecryptionFailed("sealed data is shorter than nonce and tag")
        view = memoryview(sealed)
        try:
            return self._aead().decrypt(bytes(view[:NONCE_SIZE]), view[NONCE_SIZE:], aad)
        except InvalidTag:
            raise DecryptionFailed("authentication failed (wrong key or changed bytes)") from None

    # The plaintext a key slot wraps.
    def to_bytes(self) -> bytes:
        return json.dumps(
            {"version": FORMAT_VERSION, "encryption_key": b64(self.encryption_key), "id_key": b64(self.id_key)},
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> MasterKey:
        try:
            doc = json.loads(data)
            _check_version(doc)
            return cls(unb64(doc["encryption_key"]), unb64(doc["id_key"]))
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"invalid master key payload: {e}") from None


# --- key slots ------------------------------------------------------------------------


def new_passphrase_slot(master: MasterKey, passphrase: str, params: ScryptParams = ScryptParams()) -> dict:
    salt = os.urandom(SCRYPT_SALT_SIZE)
    wrapping = passphrase_key(passphrase, salt, params)
    nonce = os.urandom(NONCE_SIZE)
    wrapped = nonce + AESGCM(wrapping).encrypt(nonce, master.to_bytes(), AAD_KEY_SLOT)
    return {
        "version": FORMAT_VERSION,
        "kind": "passphrase",
        "kdf": {"name": "scrypt", "n": params.n, "r": params.r, "p": params.p, "salt": b64(salt)},
        "wrapped": b64(wrapped),
    }


def open_passphrase_slot(slot: dict, passphrase: str) -> MasterKey:
    """Raises WrongPassphrase when the passphrase does not open this slot."""
    salt, params, wrapped = passphrase_slot(slot)
    wrapping = passphrase_key(passphrase, salt, params)
    if len(wrapped) < NONCE_SIZE + TAG_SIZE:
        raise FormatError("wrapped key too short")
    try:
        plain = AESGCM(wrapping).decrypt(wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], AAD_KEY_SLOT)
    except InvalidTag:
        raise WrongPassphrase() from None
    return MasterKey.from_bytes(plain)


# A KMS client is two plain functions, so this package needs no cloud SDK:
#   wrap(kms_key_id, plaintext) -> opaque wrapped bytes     (e.g. KMS Encrypt)
#   unwrap(kms_key_id, wrapped) -> plaintext                (e.g. KMS Decrypt)
KmsWrap = Callable[[str, bytes], bytes]
KmsUnwrap = Callable[[str, bytes], bytes]


def new_kms_slot(master: MasterKey, kms_key_id: str, wrap: KmsWrap) -> dict:
    return {
        "version": FORMAT_VERSION,
        "kind": "kms",
        "kms_key_id": kms_key_id,
        "wrapped": b64(wrap(kms_key_id, master.to_bytes())),
    }


def open_kms_slot(slot: dict, unwrap: KmsUnwrap) -> MasterKey:
    try:
        key_id = slot["kms_key_id"]
        wrapped = unb64(slot["wrapped"])
    except (KeyError, TypeError) as e:
        raise FormatError(f"invalid kms key slot: {e}") from None
    return MasterKey.from_bytes(unwrap(key_id, wrapped))


def encode_key_slot(slot: dict) -> bytes:
    return json.dumps(slot, sort_keys=True, indent=1).encode()
