"""The restart policy of `cosyvoice up`'s supervisor, as pure arithmetic (the real restarts are
in tests/e2e/test_supervision.py)."""

from __future__ import annotations

import signal

from services.cli.supervisor import RestartPolicy, describe_exit


def test_backoff_doubles_up_to_the_cap_and_gives_up_past_the_budget():
    policy = RestartPolicy(max_restarts=6, window_seconds=300, first_backoff=1, max_backoff=10)
    assert [policy.failed("flow", t) for t in range(6)] == [1, 2, 4, 8, 10, 10]
    assert policy.failed("flow", 6) is None  # the 7th failure within 300 s


def test_failures_outside_the_window_are_forgotten_and_services_counted_apart():
    policy = RestartPolicy(max_restarts=2, window_seconds=60)
    assert policy.failed("llm", 0) == 1
    assert policy.failed("llm", 10) == 2
    assert policy.failed("flow", 11) == 1  # another service has its own budget
    assert policy.failed("llm", 100) == 1  # the first two are older than the window
    assert policy.failures("llm") == 1


def test_exit_descriptions_name_the_signal():
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"
    assert describe_exit(1) == "code 1"
