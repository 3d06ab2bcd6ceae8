"""How often a TERM/INT/TERM burst leaves `cosyvoice up`'s supervisor loop asleep.

Each trial starts a process shaped like `up` (the supervisor loop on the main thread, six
children whose stdout is relayed by a thread each, and their exit watchers), pinned to one CPU
core beside --busy processes that keep that core busy, sends it the burst, and counts it hung
if it has not exited 5 s later. `--without-wakeup-fd` wires the signals as `up` did before
(a Python handler that writes to the wake-up pipe, which only runs once the main thread runs
Python code again); the default is `up`'s wiring (services/cli/supervisor.py).

    python scripts/signal_burst.py --bursts 400 --busy 6
    python scripts/signal_burst.py --bursts 400 --busy 6 --without-wakeup-fd

Needs Linux (`taskset`, util-linux).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.cli.supervisor import STOP_SIGNALS, RestartPolicy, Supervisor, wake_on_stop_signals  # noqa: E402

BURST = (signal.SIGTERM, signal.SIGINT, signal.SIGTERM)


def child(without_wakeup_fd: bool) -> None:
    """The `up`-shaped process: exits 0 once its supervisor loop sees the stop."""
    wake_read, wake_write = os.pipe()
    if without_wakeup_fd:
        def request_stop(signum: int, frame: object) -> None:
            os.write(wake_write, bytes([signum]))  # the byte the loop reads as a stop

        for signum in STOP_SIGNALS:
            signal.signal(signum, request_stop)
    else:
        wake_on_stop_signals(wake_write)
    children = []
    for index in range(6):
        process = subprocess.Popen(["sleep", "600"], stdout=subprocess.PIPE, text=True)
        threading.Thread(target=lambda p=process: [None for _ in p.stdout], daemon=True).start()
        children.append(SimpleNamespace(name=f"child{index}", process=process))
    print("ready", flush=True)
    code = Supervisor(children, lambda c: c, RestartPolicy(max_restarts=0), wake_read, wake_write).run()
    for each in children:
        each.process.kill()
        each.process.wait()
    raise SystemExit(code)


def trial(without_wakeup_fd: bool) -> bool:
    """Whether one burst left the process asleep (it is killed then)."""
    command = ["taskset", "-c", "0", sys.executable, __file__, "--child"]
    process = subprocess.Popen(command + (["--without-wakeup-fd"] if without_wakeup_fd else []),
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    for signum in BURST:
        process.send_signal(signum)
    try:
        process.wait(timeout=5)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the process and its `sleep` children
        process.wait()
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bursts", type=int, default=200)
    parser.add_argument("--busy", type=int, default=6, help="busy processes pinned to the same core (default 6)")
    parser.add_argument("--without-wakeup-fd", action="store_true", help="the wiring `up` had before")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.without_wakeup_fd)
    busy = [subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", "while True: pass"])
            for _ in range(args.busy)]
    try:
        hung = sum(trial(args.without_wakeup_fd) for _ in range(args.bursts))
    finally:
        for process in busy:
            process.kill()
            process.wait()
    wiring = "without the wake-up fd (before)" if args.without_wakeup_fd else "up's wiring"
    print(f"{hung} of {args.bursts} bursts left the supervisor asleep ({wiring}; {args.busy} busy processes on core 0)")


if __name__ == "__main__":
    main()
