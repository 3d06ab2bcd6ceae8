"""The restart policy of `cosyvoice up`'s supervisor, as pure arithmetic (the real restarts are
in tests/e2e/test_supervision.py)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys

import pytest

from services.cli.supervisor import RestartPolicy, describe_exit
from tests.conftest import ROOT


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


def test_the_exit_watchdog_prints_every_stack_and_exits_1_when_exit_hangs():
    # A non-daemon thread that never ends holds up interpreter exit forever: the watchdog must end it.
    script = ("import threading; from services.cli.supervisor import arm_exit_watchdog; "
              "threading.Thread(target=threading.Event().wait, name='stuck-forever').start(); arm_exit_watchdog(1)")
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.startswith("cosyvoice up: stopping (bounded at 1 s: past that, every thread's stack goes to "
                                 "stderr and up exits 1)\n")
    assert "Timeout (0:00:01)!" in run.stderr
    assert "in _shutdown" in run.stderr  # the main thread, waiting for the stuck one at exit
    assert run.stderr.count("Thread 0x") == 2  # and the stuck thread's stack too


def test_the_exit_watchdog_stays_silent_when_the_process_exits_in_time():
    script = "from services.cli.supervisor import arm_exit_watchdog; arm_exit_watchdog(30)"
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "Timeout" not in run.stderr


# The main thread blocks the signal, so the kernel must hand it to the other thread: what a
# burst of signals under load does by chance (a relay thread takes the second one).
_SIGNAL_ON_ANOTHER_THREAD = """
import os, signal, threading, time
from services.cli.supervisor import RestartPolicy, Supervisor, wake_on_stop_signals
wake_read, wake_write = os.pipe()
wake_on_stop_signals(wake_write)
threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.%s})
print("ready", flush=True)
print(Supervisor([], lambda child: child, RestartPolicy(), wake_read, wake_write).run(), flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_taken_by_another_thread_still_ends_the_loop(signum):
    process = subprocess.Popen([sys.executable, "-c", _SIGNAL_ON_ANOTHER_THREAD % signum.name], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    process.send_signal(signum)
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"the supervisor slept through a {signum.name} that another thread took")
    assert (process.returncode, out) == (0, "0\n")


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) not installed")
def test_the_signal_burst_measurement_runs_and_finds_up_s_wiring_awake():
    run = subprocess.run([sys.executable, "scripts/signal_burst.py", "--bursts", "3", "--busy", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "0 of 3 bursts left the supervisor asleep (up's wiring; 0 busy processes on core 0)\n"
