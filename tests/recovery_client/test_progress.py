"""The Recovery Manager's bars (clients/recovery/progress.py), rendered to a real rich
console in memory: what a customer reads when a recovery ends well or fails."""

import io

from rich.console import Console

from clients.recovery.progress import Bars


def shown(states: list[str]) -> str:
    console = Console(file=io.StringIO(), force_terminal=False, width=100)
    bars = Bars(console)
    with bars:
        for state in states:
            bars.update({"state": state, "total_progress": 10, "state_progress": 50})
    return console.file.getvalue()


def test_a_step_that_ends_in_failure_is_not_ticked_and_keeps_its_number():
    text = shown(["pending", "downloading", "failed"])
    assert "✓ waiting for a worker" in text
    assert "✗ reading the backup, building the disk" in text
    assert "✓ reading the backup" not in text
    assert "step 2 of 5" in text and "step 5 of 5" not in text


def test_a_recovery_that_completes_ticks_every_step():
    text = shown(["pending", "downloading", "finishing", "complete"])
    for words in ("waiting for a worker", "reading the backup, building the disk",
                  "starting the machine"):
        assert f"✓ {words}" in text
    assert "✗" not in text and "step 5 of 5" in text
