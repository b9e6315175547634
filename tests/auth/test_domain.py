import pytest

from services.auth.domain import (
    InvalidUsername,
    LoginThrottle,
    looks_like_token,
    new_token,
    normalize_username,
    token_hash,
)


def test_usernames_normalize_and_fold_case():
    assert normalize_username("Alice") == ("Alice", "alice")
    assert normalize_username("Zoe\u0308") == ("Zoë", "zoë")
    assert normalize_username("ops@example.com")[1] == "ops@example.com"
    for bad in ("", "ab", "a b", "x\ty", "<b>", "semi;", "a\u200bb"):
        with pytest.raises(InvalidUsername):
            normalize_username(bad)


def test_tokens_are_long_random_and_stored_hashed():
    a, b = new_token("session"), new_token("agent")
    assert a.startswith("rcs_") and b.startswith("rca_")
    assert len(a) >= 4 + 43 and looks_like_token(a) and looks_like_token(b)
    assert a != new_token("session")
    assert token_hash(a) != a and len(token_hash(a)) == 64


def test_throttle_counts_failures_in_a_sliding_window():
    now = [1000.0]
    throttle = LoginThrottle(60, per_username=3, per_address=5, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.retry_after("ann", "10.0.0.1") == 0
        throttle.failed("ann", "10.0.0.1")
    assert throttle.retry_after("ann", "10.0.0.2") == 60
    now[0] += 30
    assert throttle.retry_after("ann", None) == 30
    now[0] += 31
    assert throttle.retry_after("ann", None) == 0
    # The address limit counts every username tried from it (the first three aged out).
    for name in ("b", "c", "d", "e"):
        assert throttle.retry_after("zed", "10.0.0.1") == 0
        throttle.failed(name, "10.0.0.1")
    throttle.failed("f", "10.0.0.1")
    assert throttle.retry_after("zed", "10.0.0.1") == 60
    throttle.succeeded("ann")
    assert throttle.retry_after("ann", "10.0.0.9") == 0
