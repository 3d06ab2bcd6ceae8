"""Bistream rules on plain objects (feed + scheduler); this file must not need torch."""

from __future__ import annotations

import subprocess
import sys

from services.llm.engine.bistream import SOS, TASK_ID, BistreamFeed, FeedState, TokenOutcome
from services.llm.engine.config import EngineConfig
from services.llm.engine.scheduler import Scheduler
from services.llm.engine.sequence import Sequence, SequenceStatus
from services.llm.model.prompt import InputSegment, SegmentKind, build_prompt

SIZE = 6561
FILL, EOS = SIZE + 2, SIZE
STOP = (SIZE, SIZE + 1, SIZE + 2)
SPEECH = [(i * 37) % SIZE for i in range(40)]


def _text(*ids: int) -> InputSegment:
    return InputSegment(SegmentKind.TEXT, tuple(ids))


def _feed(prompt_text=(), prompt_speech=(), quirk=True, ratio=20.0) -> BistreamFeed:
    return BistreamFeed.start(list(prompt_text), list(prompt_speech), SIZE, ratio, quirk)


def _bistream(request_id: str, **kwargs) -> Sequence:
    return Sequence(request_id, None, params=None, min_tokens=0, max_tokens=10_000, bistream=_feed(**kwargs))


def _scheduler(max_num_seqs: int = 4, max_model_len: int = 400) -> Scheduler:
    return Scheduler(EngineConfig(max_num_seqs, 1000, max_model_len), STOP)


def _decode_until_fill(feed: BistreamFeed, token: int = 100) -> list[int]:
    """Drive steps (forced FILL where due, `token` otherwise) until the feed waits."""
    emitted = []
    while feed.state is not FeedState.WAITING_TEXT:
        sampled = feed.forced_token() or token + len(emitted)
        if feed.on_step(sampled) is TokenOutcome.EMIT:
            emitted.append(sampled)
    return emitted


def test_bistream_modules_import_no_torch() -> None:
    code = "import sys, services.llm.engine.bistream, services.llm.engine.scheduler; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_prompt_speech_is_interleaved_5_to_15_across_pieces_then_decoding_starts() -> None:
    feed = _feed(prompt_text=[1, 2, 3], prompt_speech=SPEECH)
    assert feed.next_fill_index == 5  # 40 prompt tokens leave 10 of a 15-block: 5 more, then FILL
    feed.push_piece([4, 5, 6, 7])
    assert feed.state is FeedState.WAITING_TEXT  # 25 prompt tokens still need 10 text tokens
    assert feed.pending == [SOS, _text(1, 2, 3, 4, 5), InputSegment(SegmentKind.SPEECH, tuple(SPEECH[:15]))]
    feed.push_piece(list(range(8, 16)))
    assert feed.state is FeedState.EXTEND and feed.text_cache == [] and feed.prompt_speech == []
    assert feed.num_pending == 1 + 3 * 5 + 40  # no extra text: decoding follows the last block
    assert feed.masked_token() == EOS


def test_fill_is_forced_at_next_fill_index_and_a_sampled_fill_moves_it() -> None:
    feed = _feed()
    assert feed.next_fill_index == 15
    feed.push_piece([1, 2, 3, 4, 5, 6, 7])
    assert feed.pending == [SOS, _text(1, 2, 3, 4, 5)] and feed.text_cache == [6, 7]
    assert len(_decode_until_fill(feed)) == 15  # FILL forced as the 16th output
    assert feed.history[15] == FILL and feed.next_fill_index == 31
    feed.push_piece([8, 9, 10])
    assert feed.pending == [_text(6, 7, 8, 9, 10)]  # replaces the input: the rest was fed
    assert feed.on_step(200) is TokenOutcome.EMIT
    assert feed.on_step(FILL) is TokenOutcome.FILL  # sampled early at output 17
    assert feed.next_fill_index == 17 + 16


def test_a_short_piece_after_fill_waits_and_pieces_count_one_by_one() -> None:
    feed = _feed()
    feed.push_piece(list(range(1, 13)))  # 12 tokens: 5 taken, 7 cached
    _decode_until_fill(feed)
    # Two pieces queued while waiting: each is one iteration, taking 5 tokens once.
    feed.push_piece([13, 14])
    assert feed.pending == [_text(6, 7, 8, 9, 10)] and feed.text_cache == [11, 12, 13, 14]
    _decode_until_fill(feed)
    feed.push_piece([])  # an empty piece is still an iteration: 4 cached < 5, wait
    assert feed.state is FeedState.WAITING_TEXT
    feed.push_piece([15])
    assert feed.pending == [_text(11, 12, 13, 14, 15)]


def test_end_of_text_appends_rest_and_task_id_with_the_reference_refeed() -> None:
    for quirk in (True, False):
        feed = _feed(quirk=quirk)
        feed.push_piece(list(range(1, 9)))
        last = _decode_until_fill(feed)[-1]
        feed.end_text()
        stale = [InputSegment(SegmentKind.SPEECH, (last,))] if quirk else []
        assert feed.pending == stale + [_text(6, 7, 8), TASK_ID]
        assert feed.final and feed.masked_token() is None and feed.forced_token() is None
        assert feed.max_tokens == 8 * 20
        assert feed.on_step(EOS) is TokenOutcome.STOP


def test_end_of_text_with_prompt_speech_left_drops_it_unless_fixed() -> None:
    for quirk, tail in ((True, []), (False, [InputSegment(SegmentKind.SPEECH, tuple(SPEECH[15:]))])):
        feed = _feed(prompt_text=[1, 2, 3], prompt_speech=SPEECH, quirk=quirk)
        feed.push_piece([4, 5, 6])
        feed.end_text()
        head = [SOS, _text(1, 2, 3, 4, 5), InputSegment(SegmentKind.SPEECH, tuple(SPEECH[:15]))]
        assert feed.pending == head + [_text(6), TASK_ID] + tail


def test_waiting_for_text_is_never_scheduled_and_extend_continues_the_cache() -> None:
    scheduler = _scheduler()
    bi, normal = _bistream("bi"), Sequence("n", build_prompt("sft", [1, 2, 3]), None, 0, 100)
    scheduler.add(bi)
    scheduler.add(normal)
    assert scheduler.schedule() == ([normal], True)  # no text yet: skipped, not blocking
    scheduler.postprocess([normal], [5])
    assert scheduler.schedule() == ([normal], False)
    assert scheduler.push_text("bi", [10, 11, 12, 13, 14, 15]) is None
    assert scheduler.schedule() == ([bi], True) and bi.prefill_start == 0 and bi.num_prefill_tokens == 6
    scheduler.postprocess([bi], [7])
    assert bi.bistream.num_cached == 6 and bi.decode_position == 6
    assert scheduler.schedule() == ([normal, bi], False)
    for _ in range(14):
        scheduler.postprocess([bi], [bi.bistream.forced_token() or 8])
    scheduler.postprocess([bi], [bi.bistream.forced_token()])  # forced FILL: now it waits
    assert bi.bistream.state is FeedState.WAITING_TEXT and bi.output_tokens == [7] + [8] * 14
    assert scheduler.schedule() == ([normal], False)  # still holds its slot, but not decoded
    scheduler.postprocess([normal], [STOP[0]])
    assert not scheduler.has_work() and scheduler.has_unfinished()
    scheduler.push_text("bi", [16, 17, 18, 19])  # with the cached 15: an extend of 5 at 21
    assert scheduler.has_work()
    assert scheduler.schedule() == ([bi], True) and bi.prefill_start == 21 and bi.num_prefill_tokens == 5


def test_abort_while_waiting_for_text_frees_the_room() -> None:
    scheduler = _scheduler(max_num_seqs=1)
    bi, other = _bistream("bi"), Sequence("n", build_prompt("sft", [1, 2]), None, 0, 10)
    scheduler.add(bi)
    scheduler.push_text("bi", [1, 2, 3, 4, 5])
    assert scheduler.schedule() == ([bi], True)
    bi.bistream.history.extend([9] * 14)  # pretend 14 outputs: the next one is a forced FILL
    bi.output_tokens.extend([9] * 14)
    scheduler.postprocess([bi], [9])
    scheduler.postprocess([bi], [bi.bistream.forced_token()])
    scheduler.add(other)
    assert scheduler.schedule() == ([], False)  # the only slot is held by the waiting bistream
    assert scheduler.abort("bi") is bi and bi.finish_reason == "abort"
    assert scheduler.schedule() == ([other], True)


def test_an_extend_that_does_not_fit_max_model_len_finishes_with_length() -> None:
    scheduler = _scheduler(max_model_len=40)
    bi = _bistream("bi", prompt_text=list(range(1, 11)), prompt_speech=SPEECH)
    scheduler.add(bi)
    finished = scheduler.push_text("bi", [1, 2, 3, 4, 5])  # SOS + 3 blocks = 56 rows > 40
    assert finished is bi and bi.finish_reason == "length" and not scheduler.has_unfinished()


def test_a_sampled_special_id_other_than_fill_stops_and_end_of_text_caps_the_length() -> None:
    scheduler = _scheduler()
    bi = _bistream("bi", ratio=0.5)
    scheduler.add(bi)
    scheduler.push_text("bi", [1, 2, 3, 4, 5, 6])
    scheduler.schedule()
    scheduler.postprocess([bi], [SIZE + 1])  # the reference raises on 6562; we stop
    assert bi.finish_reason == "stop" and bi.output_tokens == []
    capped = _bistream("capped", ratio=0.5)
    scheduler.add(capped)
    scheduler.push_text("capped", [1, 2, 3, 4, 5, 6])
    scheduler.schedule()
    for token in (1, 2, 3):
        scheduler.postprocess([capped], [token])
    scheduler.push_text("capped", [7])  # queued: the sequence is decoding
    assert scheduler.end_text("capped") is None and capped.bistream.max_tokens is None
    while not capped.is_finished:  # at the FILL the queue drains, the text ends: cap int(7 * 0.5)
        assert capped.status is SequenceStatus.RUNNING
        scheduler.postprocess([capped], [capped.bistream.forced_token() or 4])
    assert capped.finish_reason == "length" and len(capped.output_tokens) == 15
