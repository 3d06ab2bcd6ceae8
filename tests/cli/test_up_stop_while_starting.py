"""A stop signal while a service is still loading (minutes, with real weights) ends `up` at
once: what had started is stopped, `up` says which service was starting and exits 0. Before,
`up` went on starting every service and only then stopped them.

The flow stage is made to "load" forever by a sitecustomize on the children's PYTHONPATH:
it tells the test through a FIFO that it is loading, so the signal is sent exactly then."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

# Runs in every Python process the test starts; sys.argv is ["-m", "serve", NAME, ...] in a
# service (its launcher's argv holds "serve" further on, so it is left alone).
SITE = """
import os, sys, time
if sys.argv[1:2] == ["serve"]:
    with open({pids!r}, "a") as log:
        log.write(f"{{os.getpid()}}\\n")
    if sys.argv[2] == {stage!r}:
        with open({fifo!r}, "w") as fifo:
            fifo.write("loading\\n")
        time.sleep(3600)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited
    except FileNotFoundError:
        return True


def test_a_signal_while_a_stage_loads_stops_up_and_what_it_started(tiny_model_dir, tmp_path):
    site, fifo, pids = tmp_path / "site", tmp_path / "loading", tmp_path / "pids"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE.format(pids=str(pids), stage="flow", fifo=str(fifo)))
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    up = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--model-dir", str(tiny_model_dir), "--port", "0",
         "--metrics-port", "0", "--speaker-db", ":memory:"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    loading: queue.Queue[str] = queue.Queue()
    # A daemon thread: if `up` died before the flow started, nobody would open the FIFO's other end.
    threading.Thread(target=lambda: loading.put(Path(fifo).read_text()), daemon=True).start()
    try:
        assert loading.get(timeout=300) == "loading\n"  # the llm has started, the flow is loading
        up.send_signal(signal.SIGTERM)
        out, err = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert up.returncode == 0, err
    assert "cosyvoice up: stopped by a signal while the flow process was starting\n" in err
    assert "Traceback" not in err
    assert out == ""  # no service line: the stack never came up
    started = [int(pid) for pid in pids.read_text().split()]
    assert len(started) == 2  # the llm and the loading flow
    assert all(_gone(pid) for pid in started), "a service outlived `up`"
