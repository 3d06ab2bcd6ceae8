"""`cosyvoice up`'s supervisor: a service that dies is restarted on its own address, with
back-off, and `up` gives up (stopping the stack, exit code 1) only after repeated failures.

While a stage is down the gateway reports NOT_SERVING and answers UNAVAILABLE naming the stage
(gateway/stage_health.py); once the stage is back on the same port the gateway's channel
reconnects by itself, so nothing else restarts.

Everything happens on the thread that runs `Supervisor.run` (the main thread): the children
are tied to the life of the thread that started them (services/common/die_with_parent.py),
and one loop over one wake-up pipe sees signals, exits and due restarts in order. The signals'
numbers (signal.set_wakeup_fd) and the exit watchers' EXIT_CHILD are the bytes in that pipe.
"""

from __future__ import annotations

import faulthandler
import os
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO

EXIT_CHILD = b"c"  # written by a child's exit watcher
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_STOP_BYTES = frozenset(int(signum) for signum in STOP_SIGNALS)  # what set_wakeup_fd writes for them


def is_stop(events: bytes) -> bool:
    """Whether bytes read from the wake-up pipe hold a stop signal's."""
    return not _STOP_BYTES.isdisjoint(events)


def _ignore(signum: int, frame: object) -> None:
    """The Python-level handler: its only job is to replace the default action (death);
    the byte that set_wakeup_fd writes is what stops the loop."""


def wake_on_stop_signals(wake_write: int) -> None:
    """Make SIGINT, SIGTERM and SIGHUP end `Supervisor.run`. Call on the main thread.

    The kernel hands a signal sent to the process to any of its threads that does not block
    it, and CPython runs a Python handler on the main thread only once that thread runs Python
    code again. Taken by a relay or exit-watcher thread (most often the second signal of a
    burst, while the main thread had not yet run for the first), a signal whose handler only
    wrote to the pipe left the main thread asleep in select() forever: 22 of 400 TERM/INT/TERM
    bursts on a busy core (scripts/signal_burst.py; 0 of 400 now). set_wakeup_fd makes the C-level
    handler write the signal's number to the pipe on whichever thread takes it, so select
    wakes. A handler must also take no locks (an Event.set() inside the same Event's wait
    deadlocks its own thread): writing to a pipe takes none."""
    os.set_blocking(wake_write, False)  # set_wakeup_fd requires it; the loop drains the pipe
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _ignore)


@dataclass
class RestartPolicy:
    """At most `max_restarts` restarts of one service within `window_seconds`; the n-th
    failure in the window waits first_backoff * 2**(n-1) seconds, at most max_backoff."""

    max_restarts: int = 5
    window_seconds: float = 300.0
    first_backoff: float = 1.0
    max_backoff: float = 30.0
    _failures: dict[str, list[float]] = field(default_factory=dict)

    def failed(self, name: str, now: float) -> float | None:
        """Record a failure of `name` at `now`: the delay before restarting it, or None to give up."""
        recent = [t for t in self._failures.get(name, []) if now - t < self.window_seconds]
        recent.append(now)
        self._failures[name] = recent
        if len(recent) > self.max_restarts:
            return None
        return min(self.first_backoff * 2 ** (len(recent) - 1), self.max_backoff)

    def failures(self, name: str) -> int:
        return len(self._failures.get(name, []))


def arm_exit_watchdog(seconds: float) -> None:
    """Bound the rest of this process's life: if it is still alive `seconds` from now (a wait
    that never returns, a thread that holds up interpreter exit), print every thread's stack to
    stderr and exit 1. faulthandler's watchdog is a C thread: it fires even when no Python code
    can run. The children then get SIGTERM from the kernel (die_with_parent)."""
    print(f"cosyvoice up: stopping (bounded at {seconds:g} s: past that, every thread's stack goes to stderr "
          "and up exits 1)", file=sys.stderr, flush=True)
    faulthandler.dump_traceback_later(seconds, exit=True, file=sys.stderr)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


class Supervisor:
    """Runs until a signal (returns 0) or a service failing too often (returns 1)."""

    def __init__(
        self,
        children: list,  # list[up.Child]; not imported, up imports this module
        relaunch: Callable[[object], object],
        policy: RestartPolicy,
        wake_read: int,
        wake_write: int,
        err: TextIO = sys.stderr,
    ) -> None:
        self.children = children
        self.relaunch = relaunch  # starts a child again on its address, returns the new Child
        self.policy = policy
        self.wake_read, self.wake_write = wake_read, wake_write
        self.err = err
        self.due: dict[str, float] = {}  # service → monotonic time of its restart
        self.gave_up = ""

    def watch(self, child) -> None:  # noqa: ANN001
        """A daemon thread that wakes the loop when `child` exits."""

        def wait() -> None:
            child.process.wait()
            os.write(self.wake_write, EXIT_CHILD)

        threading.Thread(target=wait, daemon=True, name=f"{child.name}-exit").start()

    def say(self, line: str) -> None:
        print(f"cosyvoice up: {line}", file=self.err, flush=True)

    def run(self) -> int:
        for child in self.children:
            self.watch(child)
        while True:
            timeout = max(0.0, min(self.due.values()) - time.monotonic()) if self.due else None
            readable, _, _ = select.select([self.wake_read], [], [], timeout)
            events = os.read(self.wake_read, 256) if readable else b""
            if is_stop(events):
                return 0
            now = time.monotonic()
            for index, child in enumerate(self.children):
                code = child.process.poll()
                if code is not None and child.name not in self.due and not self._handle_exit(child, code, now):
                    return 1
            for index, child in enumerate(self.children):
                if self.due.get(child.name, float("inf")) <= now:
                    del self.due[child.name]
                    self.children[index] = self.relaunch(child)
                    self.watch(self.children[index])

    def _handle_exit(self, child, code: int, now: float) -> bool:  # noqa: ANN001
        delay = None if self.policy.max_restarts <= 0 else self.policy.failed(child.name, now)
        if delay is None:
            if self.policy.max_restarts <= 0:
                self.say(f"{child.name} exited with {describe_exit(code)}; stopping the stack (--max-restarts 0)")
            else:
                self.say(f"{child.name} exited with {describe_exit(code)}, its {self.policy.failures(child.name)}th "
                         f"failure within {self.policy.window_seconds:g} s; giving up and stopping the stack")
            self.gave_up = child.name
            return False
        self.say(f"{child.name} exited with {describe_exit(code)}; restarting it on {child.address} in {delay:g} s "
                 f"(restart {self.policy.failures(child.name)} of at most {self.policy.max_restarts} "
                 f"within {self.policy.window_seconds:g} s)")
        self.due[child.name] = now + delay
        return True
