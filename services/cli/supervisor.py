"""`cosyvoice up`'s supervisor: a service that dies is restarted on its own address, with
back-off, and `up` gives up (stopping the stack, exit code 1) only after repeated failures.

While a stage is down the gateway reports NOT_SERVING and answers UNAVAILABLE naming the stage
(gateway/stage_health.py); once the stage is back on the same port the gateway's channel
reconnects by itself, so nothing else restarts.

Everything happens on the thread that runs `Supervisor.run` (the main thread): the children
are tied to the life of the thread that started them (services/common/die_with_parent.py),
and one loop over one wake-up pipe sees signals, exits and due restarts in order. Signal
handlers and the exit watchers only write a byte to that pipe.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO

EXIT_SIGNAL = b"s"  # written by the signal handlers
EXIT_CHILD = b"c"  # written by a child's exit watcher


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
            if EXIT_SIGNAL in events:
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
