"""Scheduler rules on plain Sequence objects; this file must not need torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.llm.engine.config import EngineConfig, EngineConfigError
from services.llm.engine.scheduler import Scheduler, SchedulerError
from services.llm.engine.sequence import Sequence, SequenceStatus
from services.llm.model.prompt import build_prompt

STOP = (6561, 6562, 6563)


def _seq(request_id: str, text_len: int = 3, min_tokens: int = 0, max_tokens: int = 100) -> Sequence:
    prompt = build_prompt("sft", list(range(text_len)))  # text_len + 2 positions
    return Sequence(request_id, prompt, params=None, min_tokens=min_tokens, max_tokens=max_tokens)


def _scheduler(max_num_seqs: int = 4, max_num_batched_tokens: int = 100) -> Scheduler:
    return Scheduler(EngineConfig(max_num_seqs, max_num_batched_tokens, max_model_len=200), STOP)


def test_scheduler_module_imports_no_torch() -> None:
    code = (
        "import sys; import services.llm.engine.scheduler, services.llm.engine.sequence; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_prefill_first_then_decode_of_all_running() -> None:
    scheduler = _scheduler()
    a, b = _seq("a"), _seq("b")
    scheduler.add(a)
    scheduler.add(b)
    assert scheduler.schedule() == ([a, b], True)
    assert a.status is b.status is SequenceStatus.RUNNING
    scheduler.postprocess([a, b], [1, 2])
    c = _seq("c")
    scheduler.add(c)
    assert scheduler.schedule() == ([c], True)  # a newcomer's prefill goes before decode
    scheduler.postprocess([c], [3])
    assert scheduler.schedule() == ([a, b, c], False)


def test_max_num_seqs_caps_admission() -> None:
    scheduler = _scheduler(max_num_seqs=2)
    seqs = [_seq(str(i)) for i in range(3)]
    for seq in seqs:
        scheduler.add(seq)
    assert scheduler.schedule() == (seqs[:2], True)
    assert scheduler.num_waiting == 1
    assert scheduler.schedule() == (seqs[:2], False)
    scheduler.postprocess(seqs[:2], [STOP[0], 5])  # "0" finishes and frees room
    assert scheduler.schedule() == ([seqs[2]], True)


def test_token_budget_limits_a_prefill_batch_but_never_starves() -> None:
    scheduler = _scheduler(max_num_batched_tokens=10)
    big, small = _seq("big", text_len=20), _seq("small", text_len=3)  # 22 and 5 positions
    scheduler.add(big)
    scheduler.add(small)
    assert scheduler.schedule() == ([big], True)  # over budget alone: admitted anyway
    assert scheduler.schedule() == ([small], True)
    a, b, c = _seq("a", 2), _seq("b", 2), _seq("c", 2)  # 4 positions each
    scheduler = _scheduler(max_num_batched_tokens=10)
    for seq in (a, b, c):
        scheduler.add(seq)
    assert scheduler.schedule() == ([a, b], True)


def test_stop_token_finishes_without_being_emitted() -> None:
    scheduler = _scheduler()
    seq = _seq("a")
    scheduler.add(seq)
    scheduler.schedule()
    assert scheduler.postprocess([seq], [7]) == []
    for stop in STOP:  # every stop id stops, not only EOS
        other = _seq(f"s{stop}")
        scheduler.add(other)
        scheduler.schedule()
        assert scheduler.postprocess([other], [stop]) == [other]
        assert other.output_tokens == [] and other.finish_reason == "stop"
    assert seq.output_tokens == [7] and scheduler.running == [seq]


def test_max_tokens_finishes_with_length() -> None:
    scheduler = _scheduler()
    seq = _seq("a", max_tokens=2)
    scheduler.add(seq)
    scheduler.schedule()
    assert scheduler.postprocess([seq], [5]) == []
    assert scheduler.postprocess([seq], [6]) == [seq]
    assert (seq.output_tokens, seq.finish_reason, seq.is_finished) == ([5, 6], "length", True)
    assert not scheduler.has_unfinished()


def test_abort_waiting_and_running() -> None:
    scheduler = _scheduler(max_num_seqs=1)
    running, waiting = _seq("r"), _seq("w")
    scheduler.add(running)
    scheduler.add(waiting)
    scheduler.schedule()
    assert scheduler.abort("w") is waiting and waiting.finish_reason == "abort"
    assert scheduler.abort("r") is running and running.is_finished
    assert scheduler.abort("r") is None
    assert not scheduler.has_unfinished()
    assert scheduler.schedule() == ([], False)
    assert scheduler.postprocess([running], [5]) == []  # aborted mid-step: ignored


def test_duplicate_request_id_and_bad_config_are_rejected() -> None:
    scheduler = _scheduler()
    scheduler.add(_seq("a"))
    with pytest.raises(SchedulerError, match="request_id 'a'"):
        scheduler.add(_seq("a"))
    with pytest.raises(EngineConfigError, match="max_num_seqs"):
        EngineConfig(max_num_seqs=0)
    with pytest.raises(SchedulerError, match="sampled tokens"):
        scheduler.postprocess([], [1])
