"""Start a command that gets SIGTERM when the thread that started it dies, even by SIGKILL
(Linux's PR_SET_PDEATHSIG), so a crashed or killed `cosyvoice up` (or test run) leaves no
server holding its ports.

Why a launcher and not `subprocess.Popen(preexec_fn=...)`: a preexec_fn makes Python fork()
the whole parent and run Python code in the child before exec. A parent with gRPC threads
running (`up` watching health, a test session) then runs gRPC's fork handlers, and the child
can abort before it execs. Without a preexec_fn, Python starts children with vfork(), which runs
no fork handlers. The launcher sets the signal on itself and execs the command; the setting
survives exec.

    python -m services.common.die_with_parent PARENT_PID COMMAND [ARG...]
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Sequence

PR_SET_PDEATHSIG = 1


def command(argv: Sequence[str]) -> list[str]:
    """`argv`, wrapped so that it dies with this process."""
    return [sys.executable, "-m", "services.common.die_with_parent", str(os.getpid()), *argv]


def main(args: Sequence[str]) -> None:
    parent, argv = int(args[0]), list(args[1:])
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the signal was armed
            raise SystemExit(1)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
