"""`cosyvoice up` as a real process for tests that kill and signal its children: the printed
addresses, every stderr line as it arrives, and each service's process id."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT

_LINE = re.compile(r"^(gateway|llm|flow|vocoder|frontend) (\S+:\d+) \(metrics (\S+:\d+)\)")


@dataclass
class UpProcess:
    process: subprocess.Popen
    addresses: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)
    stderr: list[str] = field(default_factory=list)
    _lines: queue.Queue = field(default_factory=queue.Queue)

    @classmethod
    def start(cls, model_dir: Path, *flags: str) -> "UpProcess":
        # --metrics-port 0: free ports, never the fixed 9400-9404 another stack may hold.
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "up", "--model-dir", str(model_dir), "--port", "0",
             "--metrics-port", "0", "--speaker-db", ":memory:", *flags],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        up = cls(process)
        threading.Thread(target=up._read_stderr, daemon=True).start()
        assert process.stdout is not None
        for line in process.stdout:
            match = _LINE.match(line)
            if match:
                up.addresses[match.group(1)] = match.group(2)
                up.metrics[match.group(1)] = match.group(3)
            if line.startswith("ready"):
                break
        assert len(up.addresses) == 5, f"up did not start: {''.join(up.stderr[-20:])}"
        threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # keep draining
        return up

    @property
    def gateway(self) -> str:
        return self.addresses["gateway"]

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def wait_for_line(self, pattern: str, timeout: float = 120.0) -> str:
        """The next stderr line matching `pattern` (lines before it are skipped)."""
        compiled = re.compile(pattern)
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no stderr line matched {pattern!r} within {timeout} s") from None
            if line is None:
                raise AssertionError(f"up exited before a line matched {pattern!r}")
            if compiled.search(line):
                return line

    def gauge(self, service: str, name: str) -> float:
        with urllib.request.urlopen(f"http://{self.metrics[service]}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        assert match, f"{name} not exported"
        return float(match.group(1))

    def wait_for_gauge(self, service: str, name: str, value: float, timeout: float = 60.0) -> None:
        """A bounded wait (not a timing assumption) until the gauge reaches `value`."""
        deadline = time.monotonic() + timeout
        while self.gauge(service, name) < value:
            assert time.monotonic() < deadline, f"{name} stayed below {value} for {timeout} s"
            time.sleep(0.02)

    def pid_of(self, name: str) -> int:
        """The process id of `cosyvoice serve NAME` under this `up`."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        for pid in children:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            if b"serve" in argv and argv[argv.index(b"serve") + 1] == name.encode():
                return int(pid)
        raise AssertionError(f"no {name} process under up")

    def kill(self, name: str) -> int:
        pid = self.pid_of(name)
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self, timeout: float = 120.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
