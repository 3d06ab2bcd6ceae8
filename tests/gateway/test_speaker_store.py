"""Speaker records and their stores: validation, persistence, bad files, threads, a killed writer."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from gateway.registry import (
    MemorySpeakerStore,
    SpeakerExists,
    SpeakerStoreError,
    SqliteSpeakerStore,
    open_speaker_store,
)
from gateway.registry.store import SCHEMA_VERSION
from services.common.speakers import SpeakerRecord, validate
from tests.conftest import ROOT
from tests.gateway.speaker_store_child import COMMITTED, MARKER, make_record

CHILD = Path(__file__).with_name("speaker_store_child.py")


def voice(name: str = "alice", seed: int = 0, num_tokens: int = 6) -> SpeakerRecord:
    return make_record(name, seed, num_tokens)


def preset(name: str = "中文女") -> SpeakerRecord:
    embedding = np.random.default_rng(7).standard_normal(192, dtype=np.float32)
    return SpeakerRecord(name, "", np.zeros(0, np.int32), np.zeros((0, 80), np.float32), embedding, preset=True)


@pytest.fixture(params=["sqlite", "memory"])
def store(request, tmp_path):
    made = SqliteSpeakerStore(tmp_path / "speakers.db") if request.param == "sqlite" else MemorySpeakerStore()
    yield made
    made.close()


def test_put_get_list_delete(store):
    alice, bob, zh = voice("alice", 1), voice("bob", 2), preset()
    for record in (bob, zh, alice):
        store.put(record)
    assert store.get("alice") == alice
    assert store.get("中文女") == zh
    assert store.get("nobody") is None
    assert [r.name for r in store.list()] == ["alice", "bob", "中文女"]
    assert store.delete("bob") is True
    assert store.delete("bob") is False
    assert [r.name for r in store.list()] == ["alice", "中文女"]


def test_put_taken_name_raises_unless_overwrite(store):
    store.put(voice("alice", 1))
    with pytest.raises(SpeakerExists, match="'alice' already exists"):
        store.put(voice("alice", 2))
    assert store.get("alice") == voice("alice", 1)
    store.put(voice("alice", 2), overwrite=True)
    assert store.get("alice") == voice("alice", 2)
    store.put(voice("carol", 3), overwrite=True)  # overwrite of a new name just inserts
    assert store.get("carol") == voice("carol", 3)


def test_stored_arrays_are_private_and_read_only(store):
    record = voice()
    store.put(record)
    record.speech_tokens[0] = 6000 if record.speech_tokens[0] != 6000 else 1
    got = store.get("alice")
    assert got is not None and got == voice()
    with pytest.raises(ValueError):
        got.prompt_mel[0, 0] = 1.0


BAD_RECORDS = {
    "empty name": (dict(name=""), "name: must be 1 to 128"),
    "long name": (dict(name="x" * 129), "name: must be 1 to 128 characters, got 129"),
    "slash": (dict(name="a/b"), "name: 'a/b' contains '/'"),
    "newline": (dict(name="a\nb"), "name: .* control or non-printable"),
    "tab": (dict(name="a\tb"), "name: .* control or non-printable"),
    "padded": (dict(name=" alice"), "name: .* leading or trailing whitespace"),
    "int64 tokens": (dict(speech_tokens=np.arange(6, dtype=np.int64)), "speech_tokens: expected dtype int32"),
    "2-d tokens": (dict(speech_tokens=np.zeros((1, 6), np.int32)), "speech_tokens: expected 1 dimension"),
    "token too big": (dict(speech_tokens=np.full(6, 6561, np.int32)), r"speech_tokens: token 6561 outside \[0, 6561\)"),
    "negative token": (dict(speech_tokens=np.full(6, -1, np.int32)), "speech_tokens: token -1 outside"),
    "list tokens": (dict(speech_tokens=[1, 2, 3]), "speech_tokens: expected a numpy array, got list"),
    "mel not 2N": (dict(prompt_mel=np.zeros((13, 80), np.float32)), r"prompt_mel: expected shape \(12, 80\)"),
    "mel bins": (dict(prompt_mel=np.zeros((12, 81), np.float32)), r"prompt_mel: expected shape \(12, 80\)"),
    "float64 mel": (dict(prompt_mel=np.zeros((12, 80))), "prompt_mel: expected dtype float32, got float64"),
    "nan mel": (dict(prompt_mel=np.full((12, 80), np.nan, np.float32)), "prompt_mel: contains NaN"),
    "short embedding": (dict(embedding=np.ones(191, np.float32)), r"embedding: expected shape \(192,\)"),
    "inf embedding": (dict(embedding=np.full(192, np.inf, np.float32)), "embedding: contains NaN or infinity"),
    "zero embedding": (dict(embedding=np.zeros(192, np.float32)), "embedding: is all zeros"),
    "text without tokens": (
        dict(speech_tokens=np.zeros(0, np.int32), prompt_mel=np.zeros((0, 80), np.float32)),
        "prompt_text: must be empty when there are no speech_tokens",
    ),
    "bytes text": (dict(prompt_text=b"hi"), "prompt_text: expected a str, got bytes"),
    "nan time": (dict(created_at=float("nan")), "created_at: must be a finite"),
    "int preset": (dict(preset=1), "preset: expected a bool, got int"),
}


@pytest.mark.parametrize("case", BAD_RECORDS, ids=list(BAD_RECORDS))
def test_invalid_records_are_refused_naming_the_field(store, case):
    changes, message = BAD_RECORDS[case]
    record = dataclasses.replace(voice(), **changes)
    with pytest.raises(ValueError, match=message):
        validate(record)
    with pytest.raises(ValueError, match=message):
        store.put(record)
    assert store.list() == []


def test_valid_edge_cases():
    validate(preset())  # sft-only: N = 0, empty text
    validate(dataclasses.replace(voice(), prompt_text=""))  # cross-lingual-only voice
    validate(dataclasses.replace(voice(), name="x" * 128))
    validate(dataclasses.replace(voice(), name="Émilie the 2nd (calm)"))


def test_sqlite_persists_across_instances(tmp_path):
    path = tmp_path / "nested" / "dir" / "speakers.db"  # parents are created
    with SqliteSpeakerStore(path) as first:
        first.put(voice("alice", 1))
        first.put(preset())
        second = SqliteSpeakerStore(path)  # a second open instance (as a replica would be)
        assert second.get("alice") == voice("alice", 1)
        second.delete("中文女")
        assert [r.name for r in first.list()] == ["alice"]
        second.close()
    with SqliteSpeakerStore(path) as reopened:
        assert reopened.list() == [voice("alice", 1)]
        assert reopened.get("alice").preset is False
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_version_is_refused(tmp_path):
    path = tmp_path / "speakers.db"
    SqliteSpeakerStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(SpeakerStoreError) as caught:
        SqliteSpeakerStore(path)
    message = str(caught.value)
    assert message == (
        f"speaker database {path} has schema version 99, newer than the {SCHEMA_VERSION} this "
        "build understands; upgrade the gateway or use another file"
    )


def test_corrupt_file_gives_one_line_naming_the_path(tmp_path):
    path = tmp_path / "speakers.db"
    path.write_bytes(b"this is not a database, it is just some bytes\n" * 200)
    with pytest.raises(SpeakerStoreError) as caught:
        SqliteSpeakerStore(path)
    message = str(caught.value)
    assert message.startswith(f"speaker database {path} is unreadable or corrupt:")
    assert "\n" not in message
    assert path.read_bytes().startswith(b"this is not a database")  # left untouched


def test_unopenable_path_gives_one_line_naming_the_path(tmp_path):
    path = tmp_path / "a-directory"
    path.mkdir()
    with pytest.raises(SpeakerStoreError, match=f"speaker database {path}") as caught:
        SqliteSpeakerStore(path)
    assert "\n" not in str(caught.value)


def test_foreign_sqlite_file_is_refused_and_untouched(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE things (x)")
    with pytest.raises(SpeakerStoreError, match=f"speaker database {path} is a SQLite file of another application"):
        SqliteSpeakerStore(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_damaged_row_is_reported_not_misread(tmp_path):
    path = tmp_path / "speakers.db"
    with SqliteSpeakerStore(path) as store:
        store.put(voice("alice"))
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE speakers SET prompt_mel = zeroblob(10)")
    with SqliteSpeakerStore(path) as store:
        with pytest.raises(SpeakerStoreError, match=r"speaker 'alice' is damaged: prompt_mel: 10 bytes"):
            store.get("alice")


def test_memory_location_and_closed_store(tmp_path):
    assert isinstance(open_speaker_store(":memory:"), MemorySpeakerStore)
    assert isinstance(open_speaker_store(tmp_path / "s.db"), SqliteSpeakerStore)
    with pytest.raises(ValueError, match="use open_speaker_store"):
        SqliteSpeakerStore(":memory:")
    store = SqliteSpeakerStore(tmp_path / "closed.db")
    store.close()
    store.close()  # idempotent
    with pytest.raises(SpeakerStoreError, match="is closed"):
        store.get("alice")


def test_concurrent_puts_from_threads(store):
    threads_n, per_thread = 8, 10
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []
    race_winners: list[int] = []

    def work(index: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                store.put(voice(f"t{index}-{i}", seed=index * 100 + i, num_tokens=3))
            try:  # every thread races for the same name: exactly one may win
                store.put(voice("contested", seed=index, num_tokens=3))
                race_winners.append(index)
            except SpeakerExists:
                pass
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(race_winners) == 1
    records = store.list()
    assert len(records) == threads_n * per_thread + 1
    assert store.get("t3-7") == voice("t3-7", seed=307, num_tokens=3)
    assert store.get("contested") == voice("contested", seed=race_winners[0], num_tokens=3)


def test_store_modules_import_no_torch():
    code = "import sys, gateway.registry; sys.exit(1 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _run_child_until_marker(db: Path, mode: str) -> tuple[int, str]:
    """Start the child, wait for its in-transaction marker, SIGKILL it; return (rc, marker)."""
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(db), mode],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    watchdog = threading.Timer(120, proc.kill)  # only a hang guard; nothing waits on time
    watchdog.start()
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(MARKER):
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait()
        stderr = proc.stderr.read()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert lines and lines[-1].startswith(MARKER), f"child ended without the marker: {lines}\n{stderr}"
    assert lines[0].startswith(COMMITTED)
    committed_wal = int(lines[0].split("wal_bytes=")[1])
    marker_wal = int(lines[-1].split("wal_bytes=")[1])
    assert "written=1" in lines[-1]  # the row was in the open transaction
    assert marker_wal > committed_wal  # and its pages had spilled into the WAL uncommitted
    return proc.returncode, lines[-1]


@pytest.mark.parametrize("mode", ["new", "overwrite"])
def test_writer_killed_mid_transaction_leaves_the_last_commit(tmp_path, mode):
    db = tmp_path / "speakers.db"
    returncode, _ = _run_child_until_marker(db, mode)
    assert returncode == -signal.SIGKILL
    assert Path(str(db) + "-wal").exists()  # the killed writer left its WAL for recovery

    with SqliteSpeakerStore(db) as store:
        assert store.get("A") == make_record("A", seed=1)
        assert store.get("B") is None
        assert [r.name for r in store.list()] == ["A"]
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        store.put(make_record("B", seed=2))  # and the file is writable again
    with SqliteSpeakerStore(db) as store:
        assert [r.name for r in store.list()] == ["A", "B"]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_put_many_stores_all_or_nothing(tmp_path, kind):
    from gateway.registry.store import MemorySpeakerStore, SqliteSpeakerStore

    store = MemorySpeakerStore() if kind == "memory" else SqliteSpeakerStore(tmp_path / "s.db")
    store.put(_put_many_record("b"))
    with pytest.raises(SpeakerExists):
        store.put_many([_put_many_record("a"), _put_many_record("b")])
    assert [r.name for r in store.list()] == ["b"]  # "a" was not written either
    with pytest.raises(ValueError, match="name: 'c' appears twice in one write"):
        store.put_many([_put_many_record("c"), _put_many_record("c")])
    store.put_many([_put_many_record("a"), _put_many_record("b")], overwrite=True)
    assert [r.name for r in store.list()] == ["a", "b"]
    store.close()


def _put_many_record(name: str):
    import numpy as np

    from services.common.speakers import SpeakerRecord

    tokens = np.arange(4, dtype=np.int32)
    mel = np.zeros((8, 80), np.float32)
    return SpeakerRecord(name, "hello", tokens, mel, np.ones(192, np.float32), created_at=1.0)
