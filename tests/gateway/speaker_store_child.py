"""Child process of the speaker-store crash test: a writer that dies inside a transaction.

    python speaker_store_child.py DB_PATH new|overwrite

It registers speaker "A" and commits, then starts a second `put` ("B", or a changed "A" with
overwrite) and, through the store's `_before_commit` seam, stops inside that open transaction:
after the row is written, before COMMIT. There it prints the marker line and blocks until the
parent SIGKILLs it, so "killed mid-transaction" never depends on timing.

A tiny page cache makes SQLite spill the uncommitted pages into the WAL before the kill, so the
recovery that follows really has uncommitted frames to discard; the WAL sizes printed let the
parent check that it did.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.registry.store import SqliteSpeakerStore  # noqa: E402
from services.common.speakers import SpeakerRecord  # noqa: E402

COMMITTED = "COMMITTED"
MARKER = "IN-TRANSACTION"
NUM_TOKENS = 1000  # about 640 kB of mel: far more pages than the shrunken cache holds


def make_record(name: str, seed: int, num_tokens: int = NUM_TOKENS) -> SpeakerRecord:
    """Deterministic voice data; the parent rebuilds the same record to compare."""
    rng = np.random.default_rng(seed)
    return SpeakerRecord(
        name=name,
        prompt_text=f"prompt of {name}, seed {seed}",
        speech_tokens=rng.integers(0, 6561, num_tokens, dtype=np.int32),
        prompt_mel=rng.standard_normal((2 * num_tokens, 80), dtype=np.float32),
        embedding=rng.standard_normal(192, dtype=np.float32),
        created_at=1_700_000_000.0 + seed,
    )


def _wal_bytes(db_path: str) -> int:
    wal = Path(db_path + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def main() -> None:
    db_path, mode = sys.argv[1], sys.argv[2]
    store = SqliteSpeakerStore(db_path)

    def shrink_cache(conn: sqlite3.Connection, record: SpeakerRecord) -> None:
        conn.execute("PRAGMA cache_size = 8")  # pages; applies to the next transaction

    store._before_commit = shrink_cache
    store.put(make_record("A", seed=1))
    print(f"{COMMITTED} wal_bytes={_wal_bytes(db_path)}", flush=True)

    def block(conn: sqlite3.Connection, record: SpeakerRecord) -> None:
        # The row is visible to its own transaction: it has been written, not yet committed.
        written = conn.execute(
            "SELECT count(*) FROM speakers WHERE name = ? AND created_at = ?",
            (record.name, record.created_at),
        ).fetchone()[0]
        print(f"{MARKER} written={written} wal_bytes={_wal_bytes(db_path)}", flush=True)
        while True:
            signal.pause()

    store._before_commit = block
    if mode == "new":
        store.put(make_record("B", seed=2))
    else:
        store.put(make_record("A", seed=3), overwrite=True)
    print("UNREACHABLE: the transaction committed", flush=True)


if __name__ == "__main__":
    main()
