"""Where registered voices live: a small synchronous store interface, SQLite and in-memory.

Every method blocks (SQLite does file I/O and fsyncs), so the asyncio gateway calls them through
`asyncio.to_thread` or an executor, never on the event loop. The interface is deliberately small
(get / list / put / delete / close on whole records) so that a shared database such as Postgres
can implement it later and serve several gateway replicas.

`open_speaker_store(":memory:")` gives a `MemorySpeakerStore` (tests, throwaway deployments);
any other location is a SQLite file. `SqliteSpeakerStore` itself refuses ":memory:" rather than
creating a file of that name.
"""

from __future__ import annotations

import builtins
import sqlite3
import threading
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from services.common.speakers import SpeakerExists, SpeakerRecord, frozen_copy, validate

MEMORY = ":memory:"
SCHEMA_VERSION = 1  # PRAGMA user_version; bump with a migration when the table changes
APPLICATION_ID = 0x43565350  # PRAGMA application_id, "CVSP": tells our files from other SQLite files

_COLUMNS = (
    "name, prompt_text, num_tokens, speech_tokens, mel_frames, mel_bins, prompt_mel, "
    "embedding_dim, embedding, created_at, preset"
)
# Arrays are stored as raw little-endian bytes next to their shapes; the shapes are checked
# against the byte counts on every read, so a damaged row is reported, not misread.
_SCHEMA = """
CREATE TABLE speakers (
    name          TEXT    NOT NULL PRIMARY KEY,
    prompt_text   TEXT    NOT NULL,
    num_tokens    INTEGER NOT NULL,
    speech_tokens BLOB    NOT NULL,  -- int32 LE [num_tokens]
    mel_frames    INTEGER NOT NULL,
    mel_bins      INTEGER NOT NULL,
    prompt_mel    BLOB    NOT NULL,  -- float32 LE [mel_frames, mel_bins], row-major
    embedding_dim INTEGER NOT NULL,
    embedding     BLOB    NOT NULL,  -- float32 LE [embedding_dim]
    created_at    REAL    NOT NULL,
    preset        INTEGER NOT NULL
)
"""


class SpeakerStoreError(Exception):
    """The store cannot be used: unreadable or foreign file, unknown schema version, damaged row.

    The message is one line and names the database path."""


class SpeakerStore(Protocol):
    """Voices by name. Synchronous: run it off the event loop. Implementations are thread-safe.

    `list` returns full records sorted by name (the registry loads them all to serve lookups).
    Records handed out have read-only arrays; `put` validates and copies what it is given.
    """

    def get(self, name: str) -> SpeakerRecord | None: ...

    def list(self) -> builtins.list[SpeakerRecord]: ...

    def put(self, record: SpeakerRecord, *, overwrite: bool = False) -> None:
        """Store `record`; raise SpeakerExists if the name is taken and not `overwrite`,
        ValueError if the record is invalid. Returns only once the write is durable."""
        ...

    def put_many(self, records: Sequence[SpeakerRecord], *, overwrite: bool = False) -> None:
        """`put` for several records as one transaction: all are stored, or none is."""
        ...

    def delete(self, name: str) -> bool:
        """Remove `name`; False if there was no such speaker."""
        ...

    def close(self) -> None: ...


def open_speaker_store(location: str | Path) -> SpeakerStore:
    """The store for a `--speaker-db` value: ":memory:" or a SQLite file path."""
    if str(location) == MEMORY:
        return MemorySpeakerStore()
    return SqliteSpeakerStore(location)


class MemorySpeakerStore:
    """A dict behind a lock. Nothing survives the process."""

    def __init__(self) -> None:
        self._records: dict[str, SpeakerRecord] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> SpeakerRecord | None:
        with self._lock:
            return self._records.get(name)

    def list(self) -> builtins.list[SpeakerRecord]:
        with self._lock:
            return [self._records[name] for name in sorted(self._records)]

    def put(self, record: SpeakerRecord, *, overwrite: bool = False) -> None:
        self.put_many([record], overwrite=overwrite)

    def put_many(self, records: Sequence[SpeakerRecord], *, overwrite: bool = False) -> None:
        _check_batch(records)
        stored = [frozen_copy(record) for record in records]  # the caller's arrays stay the caller's
        with self._lock:
            if not overwrite:
                taken = next((r.name for r in records if r.name in self._records), None)
                if taken is not None:
                    raise SpeakerExists(taken)
            for record in stored:
                self._records[record.name] = record

    def delete(self, name: str) -> bool:
        with self._lock:
            return self._records.pop(name, None) is not None

    def close(self) -> None:
        pass


class SqliteSpeakerStore:
    """A SQLite file (stdlib sqlite3), one row per speaker.

    - WAL journal: readers in other processes (another replica, an admin tool) do not block the
      writer, and a crash mid-transaction leaves only uncommitted WAL frames, which recovery drops.
    - `synchronous=FULL`: in WAL mode NORMAL skips the fsync at commit, so a registration the
      client was told succeeded could vanish on power loss or an OS crash. Registrations are rare
      and small, so the fsync per commit is cheap insurance.
    - One connection behind a lock (`check_same_thread=False`): SQLite admits one writer at a
      time anyway, registry calls are rare next to synthesis, and a single connection cannot leak
      from executor threads that never close theirs. Other processes are coordinated by SQLite's
      file locks (`BEGIN IMMEDIATE` plus a busy timeout).

    `_before_commit` is a test seam, not an API: if set, it is called with the connection and the
    record inside `put`'s open transaction, after the row is written and before COMMIT. The
    crash test uses it to kill a writer at exactly that point.
    """

    _before_commit: Callable[[sqlite3.Connection, SpeakerRecord], None] | None = None

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0) -> None:
        if str(path) == MEMORY:
            raise ValueError("SqliteSpeakerStore needs a file; use open_speaker_store(':memory:')")
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpeakerStoreError(f"speaker database {self.path}: cannot create its directory: {exc}") from exc
        try:
            conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise SpeakerStoreError(f"speaker database {self.path} cannot be opened: {exc}") from exc
        try:
            self._prepare(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise SpeakerStoreError(f"speaker database {self.path} is unreadable or corrupt: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        # Read-only checks first: a foreign or newer file must not be converted to WAL or touched.
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id != APPLICATION_ID and (app_id != 0 or version != 0 or tables != 0):
            raise SpeakerStoreError(f"speaker database {self.path} is a SQLite file of another application")
        if version > SCHEMA_VERSION:
            raise SpeakerStoreError(
                f"speaker database {self.path} has schema version {version}, newer than the "
                f"{SCHEMA_VERSION} this build understands; upgrade the gateway or use another file"
            )
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise SpeakerStoreError(f"speaker database {self.path} cannot use a WAL journal (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        if version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")  # two processes creating the same new file: one wins
            try:
                if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                    conn.execute(_SCHEMA)
                    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SpeakerStoreError(f"speaker database {self.path} is closed")
        return self._conn

    def get(self, name: str) -> SpeakerRecord | None:
        with self._lock:
            row = self._run(lambda c: c.execute(f"SELECT {_COLUMNS} FROM speakers WHERE name = ?", (name,)).fetchone())
        return None if row is None else self._from_row(row)

    def list(self) -> builtins.list[SpeakerRecord]:
        with self._lock:
            rows = self._run(lambda c: c.execute(f"SELECT {_COLUMNS} FROM speakers ORDER BY name").fetchall())
        return [self._from_row(row) for row in rows]

    def put(self, record: SpeakerRecord, *, overwrite: bool = False) -> None:
        self.put_many([record], overwrite=overwrite)

    def put_many(self, records: Sequence[SpeakerRecord], *, overwrite: bool = False) -> None:
        _check_batch(records)
        rows = [_to_row(record) for record in records]
        verb = "INSERT OR REPLACE" if overwrite else "INSERT"
        statement = f"{verb} INTO speakers ({_COLUMNS}) VALUES ({', '.join('?' * len(rows[0]))})" if rows else ""

        def transaction(conn: sqlite3.Connection) -> None:
            # IMMEDIATE takes the write lock up front, so "is the name free" and the insert are
            # one atomic step even against another process sharing the file.
            conn.execute("BEGIN IMMEDIATE")
            try:
                for record, row in zip(records, rows):
                    try:
                        conn.execute(statement, row)
                    except sqlite3.IntegrityError:
                        raise SpeakerExists(record.name) from None
                if self._before_commit is not None:
                    for record in records:
                        self._before_commit(conn, record)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        with self._lock:
            self._run(transaction)

    def delete(self, name: str) -> bool:
        with self._lock:
            cursor = self._run(lambda c: c.execute("DELETE FROM speakers WHERE name = ?", (name,)))
        return cursor.rowcount > 0

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "SqliteSpeakerStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, operation: Callable[[sqlite3.Connection], object]) -> object:
        """Run under the caller's lock, turning SQLite failures into one-line SpeakerStoreErrors."""
        try:
            return operation(self._connection())
        except sqlite3.Error as exc:
            raise SpeakerStoreError(f"speaker database {self.path}: {exc}") from exc

    def _from_row(self, row: tuple) -> SpeakerRecord:
        name = row[0]
        try:
            record = _from_row(row)
            validate(record)
        except ValueError as exc:
            raise SpeakerStoreError(f"speaker database {self.path}: speaker {name!r} is damaged: {exc}") from exc
        return record


def _check_batch(records: Sequence[SpeakerRecord]) -> None:
    """Every record valid and every name once: checked before any write."""
    for record in records:
        validate(record)
    names = [r.name for r in records]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise ValueError(f"name: {duplicate!r} appears twice in one write")


def _to_row(record: SpeakerRecord) -> tuple:
    mel = record.prompt_mel
    return (
        record.name,
        record.prompt_text,
        record.num_tokens,
        record.speech_tokens.astype("<i4").tobytes(),
        mel.shape[0],
        mel.shape[1],
        np.ascontiguousarray(mel, dtype="<f4").tobytes(),
        record.embedding.shape[0],
        record.embedding.astype("<f4").tobytes(),
        float(record.created_at),
        int(record.preset),
    )


def _array(blob: bytes, dtype: str, shape: tuple[int, ...], column: str) -> np.ndarray:
    expected = 4 * int(np.prod(shape))
    if not isinstance(blob, bytes) or len(blob) != expected:
        size = len(blob) if isinstance(blob, bytes) else type(blob).__name__
        raise ValueError(f"{column}: {size} bytes stored for shape {shape} ({expected} expected)")
    # frombuffer over bytes is read-only, which is what a shared record should be.
    return np.frombuffer(blob, dtype=dtype).reshape(shape).astype(dtype[1:], copy=False)


def _from_row(row: tuple) -> SpeakerRecord:
    name, text, num_tokens, tokens, frames, bins, mel, dim, embedding, created_at, preset = row
    return SpeakerRecord(
        name=name,
        prompt_text=text,
        speech_tokens=_array(tokens, "<i4", (num_tokens,), "speech_tokens"),
        prompt_mel=_array(mel, "<f4", (frames, bins), "prompt_mel"),
        embedding=_array(embedding, "<f4", (dim,), "embedding"),
        created_at=float(created_at),
        preset=bool(preset),
    )
