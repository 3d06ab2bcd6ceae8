"""The one compute thread of a stage, and its scheduling priority.

Each stage process runs its model on one dedicated thread while its event loop relays chunks.
When the CPU is oversubscribed, every relay hop waits for a time slice behind compute-bound
threads, and a request's first audio crosses about six hops. Giving the compute thread a
higher nice value (Linux schedules threads, not processes) lets relays preempt compute: the
same work gets done, but chunks stop queueing behind it.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

logger = logging.getLogger(__name__)


def lower_current_thread_priority(increment: int) -> None:
    if increment <= 0 or not hasattr(os, "setpriority"):
        return
    thread_id = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread_id)
        os.setpriority(os.PRIO_PROCESS, thread_id, min(19, current + increment))
    except OSError as exc:  # not permitted in some sandboxes: correctness does not depend on it
        logger.warning("cannot lower the compute thread's priority: %s", exc)


def compute_executor(name: str, nice_increment: int = 0) -> ThreadPoolExecutor:
    """A single-thread executor whose thread runs at `nice_increment` below the process."""
    return ThreadPoolExecutor(
        max_workers=1,
        thread_name_prefix=name,
        initializer=lower_current_thread_priority,
        initargs=(nice_increment,),
    )
