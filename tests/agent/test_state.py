"""The agent's state file and its session locks (clients/agent/state.py), with real files
and a second real process holding a lock."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from clients.agent.state import SESSIONS, StateFile
from tests.agent.conftest import ROOT


def test_a_session_is_live_while_its_run_holds_it_and_its_lock_goes_with_it(tmp_path):
    state = StateFile(tmp_path)
    mine = state.hold_session("a" * 32)
    state.note_session("a" * 32)
    state.note_session("b" * 32)  # a killed run's: noted, held by nobody
    assert state.session_is_live("a" * 32) and not state.session_is_live("b" * 32)

    state.forget_sessions(["b" * 32])
    assert state.load().open_sessions == ["a" * 32]
    state.forget_sessions(["a" * 32])  # still held: its lock file stays until the run ends
    assert (tmp_path / SESSIONS / f"{'a' * 32}.lock").exists()
    mine.close()
    state.sweep_session_locks()
    assert list((tmp_path / SESSIONS).iterdir()) == []


def test_another_process_holding_a_session_keeps_it_live_until_it_dies(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from clients.agent.state import StateFile
            state = StateFile({str(tmp_path)!r})
            held = state.hold_session({'c' * 32!r})
            state.note_session({'c' * 32!r})
            print("held", flush=True)
            sys.stdin.read()
        """)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        state = StateFile(tmp_path)
        assert state.load().open_sessions == ["c" * 32] and state.session_is_live("c" * 32)
        state.sweep_session_locks()  # noted and held: kept
        assert (tmp_path / SESSIONS / f"{'c' * 32}.lock").exists()
    finally:
        holder.kill()
        holder.wait()
    assert not StateFile(tmp_path).session_is_live("c" * 32)  # a killed run holds nothing


def test_changes_from_two_processes_are_both_kept(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from clients.agent.state import StateFile
        state = StateFile({str(tmp_path)!r})
        for i in range(100):
            state.note_session(f"{{sys.argv[1]}}{{i:031d}}")
    """)
    writers = [subprocess.Popen([sys.executable, "-c", script, tag], cwd=ROOT) for tag in "de"]
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    noted = StateFile(tmp_path).load().open_sessions
    assert len(noted) == 200 and len(set(noted)) == 200
