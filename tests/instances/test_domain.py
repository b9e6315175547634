"""The instances service's rules."""

from datetime import UTC, datetime

import pytest

from services.instances import domain


@pytest.mark.parametrize("state, action, allowed", [
    ("stopped", "start", True), ("running", "start", False), ("pending", "start", False),
    ("running", "stop", True), ("stopped", "stop", False), ("pending", "stop", False),
    ("pending", "terminate", True), ("running", "terminate", True),
    ("stopped", "terminate", True),
    *((state, action, False) for state in ("terminated", "failed")
      for action in ("start", "stop", "terminate")),
])
def test_transitions(state, action, allowed):
    if allowed:
        domain.check_transition(state, action)
    else:
        with pytest.raises(domain.ImpossibleTransition, match=f"is {state}"):
            domain.check_transition(state, action)


def test_states_after_an_action():
    assert domain.after("stop") == "stopped"
    assert domain.after("terminate") == "terminated"
    assert domain.after("start", "running") == "running"
    assert domain.after("start", "stopped") == "pending"


def test_cleanup_cutoff_is_counted_from_the_tick():
    tick = datetime(2025, 3, 20, 4, 2, tzinfo=UTC)
    assert domain.cleanup_cutoff(tick, 14) == datetime(2025, 3, 6, 4, 2, tzinfo=UTC)


def test_client_tokens_are_stable_short_and_distinct():
    token = domain.client_token("machine", "r" * 200)
    assert token == domain.client_token("machine", "r" * 200)
    assert len(token) <= domain.CLIENT_TOKEN_MAX and token.isascii()
    assert token != domain.client_token("machine", "r" * 199)
    assert domain.environment_token("u", "aws", 1) != domain.environment_token("u", "aws", 2)


def test_reasons_are_one_line_and_bounded():
    assert domain.short_reason("a\n  b") == "a b"
    assert len(domain.short_reason("x" * 5000)) == domain.REASON_MAX
