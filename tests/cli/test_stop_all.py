"""`up`'s shutdown order: the HTTP front, then the gateway, then every stage at once; what
ignores SIGTERM past the grace is killed, and `up` says so."""

from __future__ import annotations

import subprocess
from pathlib import Path

from services.cli.children import Child, stop_all


def _child(name: str, on_term: str, log: Path) -> Child:
    # The shell records its SIGTERM, then runs `on_term` and exits 0. `wait` makes the shell
    # take the trap while `sleep` runs.
    script = f"trap 'echo {name} >> {log}; {on_term or ':'}; exit 0' TERM; echo up; sleep 60 & wait"
    return _started(Child(name, subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True)))


def _started(child: Child) -> Child:
    assert child.process.stdout is not None
    assert child.process.stdout.readline() == "up\n"  # its trap is set
    return child


def test_fronts_stop_one_by_one_then_the_stages_together(tmp_path):
    log = tmp_path / "order"
    # Each stage finishes its drain only once the other has had its SIGTERM: one at a time,
    # the first would wait for a signal that never comes until the grace ran out.
    wait_for = "while ! grep -qx {other} " + str(log) + "; do sleep 0.05; done"
    children = [
        _child("gateway", "", log),
        _child("llm", wait_for.format(other="flow"), log),
        _child("flow", wait_for.format(other="llm"), log),
        _child("http", "", log),
    ]
    exits = stop_all(children, grace=60)
    assert exits == {"http": 0, "gateway": 0, "llm": 0, "flow": 0}
    order = log.read_text().split()
    assert order[:2] == ["http", "gateway"] and sorted(order[2:]) == ["flow", "llm"]


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path, capsys):
    stubborn = _started(Child("vocoder", subprocess.Popen(["sh", "-c", "trap '' TERM; echo up; sleep 60 & wait"],
                                                          stdout=subprocess.PIPE, text=True)))
    exits = stop_all([stubborn], grace=0.5)
    assert exits == {"vocoder": -9}
    assert "cosyvoice up: vocoder did not stop within 0.5 s of SIGTERM; killing it" in capsys.readouterr().err
