"""The passphrase slot's key derivation, and deriving it ahead of need (kdf.py)."""

from __future__ import annotations

import os

import pytest

from shared.format import kdf
from shared.format.errors import FormatError
from shared.format.kdf import ScryptParams, derive_ahead, passphrase_key

from .conftest import FAST_KDF


@pytest.fixture(autouse=True)
def no_keys_ahead(monkeypatch):
    monkeypatch.setattr(kdf, "_ahead", {})


def test_a_key_derived_ahead_is_taken_and_is_the_key_derived_now():
    salt = os.urandom(16)
    derive_ahead("a passphrase", salt, FAST_KDF)
    ahead = kdf._ahead[("a passphrase", salt, FAST_KDF)]
    key = passphrase_key("a passphrase", salt, FAST_KDF)
    assert key is ahead.key  # the one derived ahead, not a second derivation
    assert key == kdf._derive("a passphrase", salt, FAST_KDF)


def test_other_inputs_are_derived_apart():
    salt = os.urandom(16)
    derive_ahead("a passphrase", salt, FAST_KDF)
    other = passphrase_key("another passphrase", salt, FAST_KDF)
    assert other == kdf._derive("another passphrase", salt, FAST_KDF)
    assert other != passphrase_key("a passphrase", salt, FAST_KDF)
    assert passphrase_key("a passphrase", os.urandom(16), FAST_KDF) != other


def test_the_same_inputs_start_one_derivation():
    salt = os.urandom(16)
    derive_ahead("a passphrase", salt, FAST_KDF)
    first = kdf._ahead[("a passphrase", salt, FAST_KDF)]
    derive_ahead("a passphrase", salt, FAST_KDF)
    assert kdf._ahead[("a passphrase", salt, FAST_KDF)] is first and len(kdf._ahead) == 1


@pytest.mark.parametrize("params", [ScryptParams(n=3, r=8, p=1), ScryptParams(n=2**23, r=8, p=1),
                                    ScryptParams(n=2**14, r=33, p=1)])
def test_bounds_are_checked_before_anything_starts(params):
    # a hostile key slot must not make the agent allocate gigabytes, ahead or not
    with pytest.raises(FormatError):
        derive_ahead("a passphrase", os.urandom(16), params)
    assert kdf._ahead == {}
    with pytest.raises(FormatError):
        passphrase_key("a passphrase", os.urandom(16), params)


def test_a_derivation_that_failed_ahead_is_made_again_and_fails_there():
    not_bytes = "a salt that is not bytes"
    derive_ahead("a passphrase", not_bytes, FAST_KDF)  # type: ignore[arg-type]
    ahead = kdf._ahead[("a passphrase", not_bytes, FAST_KDF)]
    ahead.done.wait()
    assert ahead.key is None
    with pytest.raises(TypeError):  # the library's own error, raised where the key is wanted
        passphrase_key("a passphrase", not_bytes, FAST_KDF)  # type: ignore[arg-type]


def test_the_passphrase_is_normalised_the_same_way_ahead():
    # "é" as e + combining accent (NFD, as a Mac may type it) or as one code point (NFC)
    salt = os.urandom(16)
    derive_ahead("cafe\u0301 au lait", salt, FAST_KDF)
    ahead = kdf._ahead[("cafe\u0301 au lait", salt, FAST_KDF)]
    assert passphrase_key("cafe\u0301 au lait", salt, FAST_KDF) is ahead.key
    assert ahead.key == passphrase_key("caf\u00e9 au lait", salt, FAST_KDF)  # derived now, from NFC


@pytest.mark.parametrize("params", [ScryptParams(n=2**22, r=8, p=1), ScryptParams(n=2**18, r=16, p=1)])
def test_memory_is_capped(params):
    with pytest.raises(FormatError, match="MiB"):
        params.check()
    ScryptParams(n=2**17, r=8, p=1).check()  # the largest slots ReClo made (128 MiB) still open


@pytest.mark.parametrize("params", [ScryptParams(n=2.0**14, r=8, p=1), ScryptParams(n=2**14, r=True, p=1),
                                    ScryptParams(n="16384", r=8, p=1)])
def test_parameters_must_be_integers(params):
    with pytest.raises(FormatError, match="integers"):
        params.check()


@pytest.mark.parametrize("kdf_field, problem", [
    ({"name": "scrypt", "n": 1e999, "r": 8, "p": 1, "salt": "AAAA"}, "integers"),  # JSON's Infinity
    ({"name": "scrypt", "n": 2**14, "r": 8, "p": 1, "salt": "!!"}, "invalid"),
    ({"name": "scrypt", "n": 2**14, "r": 8, "p": 1}, "invalid"),
    ({"name": "argon2", "n": 2**14, "r": 8, "p": 1, "salt": "AAAA"}, "unknown"),
    ("not an object", "invalid"),
])
def test_a_slot_s_parameters_are_checked_before_deriving(kdf_field, problem):
    with pytest.raises(FormatError, match=problem):
        kdf.passphrase_slot({"kind": "passphrase", "kdf": kdf_field, "wrapped": "AAAA"})


def test_a_thread_that_cannot_start_leaves_nothing_to_wait_for(monkeypatch):
    # at the process's limit of threads; not something to reach for real in a test
    def refuse(self):
        raise RuntimeError("can't start new thread")

    salt = os.urandom(16)
    with monkeypatch.context() as m:
        m.setattr(kdf.threading.Thread, "start", refuse)
        with pytest.raises(RuntimeError):
            derive_ahead("a passphrase", salt, FAST_KDF)
    assert kdf._ahead == {}
    assert passphrase_key("a passphrase", salt, FAST_KDF) == kdf._derive("a passphrase", salt, FAST_KDF)
