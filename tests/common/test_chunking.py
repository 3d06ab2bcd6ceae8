import pytest

from services.common.chunking import ChunkPolicy, TokenChunker


def _schedule(num_prompt: int, num_tokens: int, policy: ChunkPolicy = ChunkPolicy()):
    chunker = TokenChunker(policy, num_prompt)
    chunks = []
    for n in range(1, num_tokens + 1):  # tokens arrive one decode step at a time
        chunks += chunker.ready(n)
    return chunks + chunker.finish(num_tokens)


def test_upstream_schedule_without_prompt_grows_25_50_100():
    chunks = _schedule(0, 300)
    spans = [(c.offset, c.end, c.is_final) for c in chunks]
    assert spans == [(0, 28, False), (25, 78, False), (75, 178, False), (175, 278, False), (275, 300, True)]
    assert [c.num_new_tokens for c in chunks] == [25, 50, 100, 100, 25]
    assert sum(c.num_new_tokens for c in chunks) == 300


def test_first_hop_is_padded_to_the_prompt_chunk_grid():
    chunker = TokenChunker(ChunkPolicy(), num_prompt_tokens=37)
    assert chunker.prompt_pad == 13
    chunks = chunker.ready(41)
    assert [(c.offset, c.end) for c in chunks] == [(0, 41)]  # 37 + 38 = 75 = 3 × 25
    assert chunker.next_hop == 50  # growth starts from the base hop, not the padded one


def test_nothing_is_cut_without_the_lookahead():
    chunker = TokenChunker(ChunkPolicy(), 0)
    assert chunker.ready(27) == []
    assert len(chunker.ready(28)) == 1


def test_short_utterance_is_one_final_chunk():
    chunks = _schedule(0, 20)
    assert [(c.offset, c.end, c.is_final, c.num_new_tokens) for c in chunks] == [(0, 20, True, 20)]


def test_state_is_per_request():
    first = _schedule(0, 300)
    second = _schedule(0, 300)  # upstream would start this one at hop 100
    assert first == second


def test_bursts_of_tokens_cut_the_same_chunks_as_single_steps():
    chunker = TokenChunker(ChunkPolicy(), 10)
    burst = chunker.ready(200) + chunker.finish(230)
    assert burst == _schedule(10, 230)


@pytest.mark.parametrize("kwargs", [{"base_hop": 0}, {"max_hop": 10}, {"scale_factor": 0}, {"lookahead": -1}])
def test_bad_policies_are_rejected(kwargs):
    with pytest.raises(ValueError):
        ChunkPolicy(**kwargs)
