import json
import os
import unicodedata

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.format import KeyUnavailable, Repository, WrongPassphrase
from shared.format.crypto import (
    AAD_INDEX,
    AAD_SNAPSHOT,
    MasterKey,
    encode_key_slot,
    new_kms_slot,
    new_passphrase_slot,
    open_kms_slot,
    open_passphrase_slot,
)
from shared.format.kdf import decode_key_slot
from shared.format.errors import CorruptBlob, DecryptionFailed, FormatError
from shared.format.pack import BlobType, PackEntry, open_blob, seal_blob

from .conftest import FAST_KDF, PASSPHRASE, reopen


def test_seal_round_trip_and_fresh_nonces():
    key = MasterKey.generate()
    a = key.seal(b"secret", AAD_INDEX)
    b = key.seal(b"secret", AAD_INDEX)
    assert a != b and a[:12] != b[:12]  # a random nonce every time
    assert len(a) == 12 + len(b"secret") + 16
    assert key.open(a, AAD_INDEX) == b"secret"


def test_tampered_or_misplaced_ciphertext_is_refused():
    key = MasterKey.generate()
    sealed = bytearray(key.seal(b"some plaintext", AAD_INDEX))
    with pytest.raises(DecryptionFailed):
        key.open(sealed, AAD_SNAPSHOT)  # an index object presented as a snapshot
    sealed[20] ^= 1
    with pytest.raises(DecryptionFailed):
        key.open(bytes(sealed), AAD_INDEX)
    with pytest.raises(DecryptionFailed):
        MasterKey.generate().open(key.seal(b"x", AAD_INDEX), AAD_INDEX)


def test_chunk_ids_are_keyed():
    k1, k2 = MasterKey.generate(), MasterKey.generate()
    assert k1.chunk_id(b"data") == k1.chunk_id(b"data")
    assert k1.chunk_id(b"data") != k2.chunk_id(b"data")
    assert len(k1.chunk_id(b"data")) == 32


def test_blob_round_trip_and_tamper_gives_corrupt_blob_naming_pack_and_offset():
    key = MasterKey.generate()
    data = b"chunk " * 1000
    blob_id = key.chunk_id(data)
    sealed = seal_blob(key, BlobType.DATA, blob_id, data)
    entry = PackEntry(BlobType.DATA, blob_id, 4096, len(sealed), len(data))
    assert open_blob(key, entry, sealed, pack_id="p1") == data

    tampered = bytearray(sealed)
    tampered[len(tampered) // 2] ^= 0x40
    with pytest.raises(CorruptBlob) as e:
        open_blob(key, entry, bytes(tampered), pack_id="p1")
    assert e.value.pack_id == "p1" and e.value.offset == 4096 and "p1" in str(e.value)

    # a valid blob under the wrong id or type does not open either
    other = PackEntry(BlobType.DATA, key.chunk_id(b"other"), 4096, len(sealed), len(data))
    with pytest.raises(CorruptBlob):
        open_blob(key, other, sealed, pack_id="p1")
    as_tree = PackEntry(BlobType.TREE, blob_id, 4096, len(sealed), len(data))
    with pytest.raises(CorruptBlob):
        open_blob(key, as_tree, sealed, pack_id="p1")


def test_passphrase_slot():
    key = MasterKey.generate()
    slot = decode_key_slot(encode_key_slot(new_passphrase_slot(key, "pässword", FAST_KDF)))
    assert slot["kdf"] == {**slot["kdf"], "name": "scrypt", "n": 2**14, "r": 8, "p": 1}
    opened = open_passphrase_slot(slot, "pässword")
    assert (opened.encryption_key, opened.id_key) == (key.encryption_key, key.id_key)
    # the same passphrase typed decomposed (as macOS does) opens it too
    assert open_passphrase_slot(slot, unicodedata.normalize("NFD", "pässword")).id_key == key.id_key
    with pytest.raises(WrongPassphrase):
        open_passphrase_slot(slot, "password")


def test_hostile_kdf_parameters_are_refused():
    slot = new_passphrase_slot(MasterKey.generate(), "pw", FAST_KDF)
    slot["kdf"]["n"] = 2**30
    with pytest.raises(FormatError):
        open_passphrase_slot(slot, "pw")


class LocalKms:
    """A stand-in key-management service: real AES-GCM under a key only it holds."""

    def __init__(self):
        self.keys = {"alias/reclo": AESGCM.generate_key(256)}

    def wrap(self, key_id: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + AESGCM(self.keys[key_id]).encrypt(nonce, plaintext, key_id.encode())

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        return AESGCM(self.keys[key_id]).decrypt(wrapped[:12], wrapped[12:], key_id.encode())


def test_kms_slot():
    kms = LocalKms()
    key = MasterKey.generate()
    slot = decode_key_slot(encode_key_slot(new_kms_slot(key, "alias/reclo", kms.wrap)))
    assert slot["kind"] == "kms" and slot["kms_key_id"] == "alias/reclo"
    assert open_kms_slot(slot, kms.unwrap).encryption_key == key.encryption_key


async def test_repository_opens_with_passphrase_or_kms_and_refuses_a_wrong_passphrase(store):
    kms = LocalKms()
    repo = await Repository.init(store, PASSPHRASE, kdf=FAST_KDF, kms=("alias/reclo", kms.wrap))
    by_passphrase = await reopen(store)
    by_kms = await Repository.open(store, kms_unwrap=kms.unwrap)
    assert by_passphrase.key.id_key == by_kms.key.id_key == repo.key.id_key
    assert by_kms.config == repo.config

    with pytest.raises(WrongPassphrase) as e:
        await Repository.open(store, "not the passphrase")
    assert "wrong passphrase" in str(e.value)
    with pytest.raises(KeyUnavailable):
        await Repository.open(store)
    with pytest.raises(KeyUnavailable):
        await Repository.open(store, kms_unwrap=LocalKms().unwrap)  # another KMS key


async def test_key_slots_store_no_secret_in_clear(store):
    repo = await Repository.init(store, PASSPHRASE, kdf=FAST_KDF)
    [slot_key] = [k async for k in store.list("keys/")]
    raw = await store.get(slot_key)
    assert repo.key.encryption_key not in raw and repo.key.id_key not in raw
    assert PASSPHRASE.encode() not in raw
    assert json.loads(raw)["kind"] == "passphrase"
    config = await store.get("config")
    assert b"fastcdc" not in config  # the config (with the chunker seed) is sealed


async def test_a_damaged_passphrase_slot_does_not_lock_out_the_others(store):
    repo = await Repository.init(store, PASSPHRASE, kdf=FAST_KDF)
    damaged = {"version": 1, "kind": "passphrase", "wrapped": "AAAA",
               "kdf": {"name": "scrypt", "n": float("inf"), "r": 8, "p": 1, "salt": "AAAA"}}
    await store.put("keys/0000-damaged", json.dumps(damaged).encode())  # listed, and tried, first
    assert (await reopen(store)).key.id_key == repo.key.id_key
    with pytest.raises(WrongPassphrase):  # a slot that is whole says the passphrase is wrong
        await Repository.open(store, "not the passphrase")


async def test_only_damaged_passphrase_slots_say_so(store):
    await store.put("config", b"whatever: the key slots are looked at first")
    too_big = {"version": 1, "kind": "passphrase", "wrapped": "AAAA",
               "kdf": {"name": "scrypt", "n": 2**22, "r": 32, "p": 16, "salt": "AAAAAAAAAAAAAAAAAAAAAA=="}}
    await store.put("keys/k1", json.dumps(too_big).encode())  # 16 GiB of scrypt: refused, not run
    with pytest.raises(FormatError, match="MiB"):
        await Repository.open(store, PASSPHRASE)
