"""Flow compute of one streamed utterance: full re-run per chunk vs incremental vs one offline call.

Tiny model (services/tinymodel), one torch thread, the upstream 25 → 50 → 100 token schedule.
Each mode decodes the same tokens in the same process; the numbers are CPU seconds of the
process summed over the flow calls (no gRPC, no batching). Usage:

    .venv/bin/python scripts/bench_incremental_flow.py [--tokens 750] [--prompt-tokens 50]
    .venv/bin/python scripts/bench_incremental_flow.py --streams 4 --tokens 250

--streams N decodes N streams in lockstep, one batched call per round as the flow runner does:
full re-run vs incremental with the streams' windows one by one vs batched together.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.common.modeldir.layout import ModelDir  # noqa: E402
from services.flow.chunk_decoder import ChunkJob, FlowSession, decode_chunk_batch  # noqa: E402
from services.flow.incremental import IncrementalFlow, decode_streams  # noqa: E402
from services.flow.model.config import REFERENCE_N_TIMESTEPS  # noqa: E402
from services.flow.model.loader import load_flow  # noqa: E402
from services.tinymodel.writer import write_tiny_model  # noqa: E402

LOOKAHEAD = 3


def schedule(n_tokens: int, n_prompt: int, hop: int = 25, max_hop: int = 100) -> list[tuple[int, int, bool]]:
    """(tokens passed, token offset, finalize) per call, as CosyVoice2Model.tts streams."""
    prompt_pad = math.ceil(n_prompt / hop) * hop - n_prompt
    calls, offset = [], 0
    while True:
        this_hop = hop + prompt_pad if offset == 0 else hop
        if n_tokens - offset < this_hop + LOOKAHEAD:
            break
        calls.append((offset + this_hop + LOOKAHEAD, offset, False))
        offset += this_hop
        hop = min(max_hop, hop * 2)
    calls.append((n_tokens, offset, True))
    return calls


def timed(fn):  # noqa: ANN001, ANN201
    # CPU seconds of this process (one torch thread): on a shared machine, wall time mostly
    # measures the neighbours; CPU time is the compute the call costs.
    started = time.process_time()
    result = fn()
    return result, time.process_time() - started


def bench_streams(flow: torch.nn.Module, streams: int, n_tokens: int, n_prompt: int) -> None:
    generator = torch.Generator().manual_seed(1)
    sessions, token_lists = [], []
    for _ in range(streams):
        prompt = torch.randint(0, 6561, (n_prompt,), generator=generator)
        sessions.append(FlowSession(prompt, torch.randn(2 * n_prompt, 80, generator=generator) - 5,
                                    torch.randn(192, generator=generator)))
        token_lists.append(torch.randint(0, 6561, (n_tokens,), generator=generator).tolist())
    calls = schedule(n_tokens, n_prompt)

    def fresh() -> list[IncrementalFlow]:
        return [IncrementalFlow(flow, s.prompt_mel, s.embedding, REFERENCE_N_TIMESTEPS) for s in sessions]

    one_by_one, together = fresh(), fresh()
    decode_chunk_batch(flow, [ChunkJob(sessions[0], tuple(token_lists[0][:40]), 0, False)])  # warm-up
    full = sequential = batched = 0.0
    for n, offset, final in calls:
        if final:  # the same batched full-attention call in every mode
            continue
        jobs = [ChunkJob(s, tuple(t[:n]), offset, False) for s, t in zip(sessions, token_lists)]
        full += timed(lambda: decode_chunk_batch(flow, jobs))[1]
        items = [(state, torch.cat([s.prompt_tokens, torch.tensor(t[:n])]), 2 * (n_prompt + offset), False)
                 for state, s, t in zip(one_by_one, sessions, token_lists)]
        sequential += sum(timed(lambda item=item: decode_streams([item]))[1] for item in items)
        items = [(state, *item[1:]) for state, item in zip(together, items)]
        batched += timed(lambda: decode_streams(items))[1]
    jobs = [ChunkJob(s, tuple(t), calls[-1][1], True) for s, t in zip(sessions, token_lists)]
    final_seconds = timed(lambda: decode_chunk_batch(flow, jobs))[1]
    print(f"{streams} streams x {n_tokens} tokens + {n_prompt}-token prompt, {len(calls) - 1} non-final rounds "
          f"+ the final, 1 thread, CPU seconds")
    print(f"non-final rounds: full re-run batched {full:.2f} s, incremental stream by stream {sequential:.2f} s "
          f"({sequential / full:.2f}x), incremental batched {batched:.2f} s ({batched / full:.2f}x)")
    print(f"final round (batched full attention, the same in every mode): {final_seconds:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=750, help="generated speech tokens (25 per second)")
    parser.add_argument("--prompt-tokens", type=int, default=50, help="voice prompt tokens")
    parser.add_argument("--streams", type=int, default=1, help="> 1: concurrent streams, batched as the runner does")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        flow = load_flow(ModelDir.open(write_tiny_model(Path(tmp), seed=0)))
    if args.streams > 1:
        bench_streams(flow, args.streams, args.tokens, args.prompt_tokens)
        return
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 6561, (args.tokens,), generator=generator).tolist()
    prompt = torch.randint(0, 6561, (args.prompt_tokens,), generator=generator)
    session = FlowSession(prompt, torch.randn(2 * args.prompt_tokens, 80, generator=generator) - 5,
                          torch.randn(192, generator=generator))
    calls = schedule(args.tokens, args.prompt_tokens)

    def full(n: int, offset: int, final: bool) -> np.ndarray:
        return decode_chunk_batch(flow, [ChunkJob(session, tuple(tokens[:n]), offset, final)])[0]

    decode_chunk_batch(flow, [ChunkJob(session, tuple(tokens[:40]), 0, False)])  # warm-up
    off_mels, off_times = zip(*(timed(lambda c=c: full(*c)) for c in calls))
    state = IncrementalFlow(flow, session.prompt_mel, session.embedding, REFERENCE_N_TIMESTEPS)
    on_mels, on_times = [], []
    for n, offset, final in calls:
        if final:  # full attention: the one call that cannot reuse the caches
            mel, seconds = timed(lambda: full(n, offset, True))
        else:
            ids = torch.cat([prompt, torch.tensor(tokens[:n])])
            mel, seconds = timed(lambda: state.decode(ids, 2 * (args.prompt_tokens + offset)))
        on_mels.append(mel)
        on_times.append(seconds)
    # The approximate switch (COSYVOICE_FLOW_INCREMENTAL_CHUNKED_FINAL): the last call from the caches too.
    n, offset, _ = calls[-1]
    ids = torch.cat([prompt, torch.tensor(tokens[:n])])
    cached_bytes, cached_frames = state.nbytes(), state.frame_start
    chunked_final, chunked_seconds = timed(lambda: state.decode(ids, 2 * (args.prompt_tokens + offset), True))
    _, offline = timed(lambda: full(args.tokens, 0, True))

    deviation = max(float(np.abs(a - b).max()) for a, b in zip(on_mels, off_mels) if a.size)
    print(f"{args.tokens} tokens ({args.tokens / 25:.1f} s) + {args.prompt_tokens}-token prompt, "
          f"{len(calls)} calls, 1 thread, CPU seconds")
    print(f"{'call':>4} {'prefix':>6} {'final':>5} {'off s':>7} {'on s':>7}")
    for index, ((n, _, final), t_off, t_on) in enumerate(zip(calls, off_times, on_times)):
        print(f"{index:>4} {args.prompt_tokens + n:>6} {str(final):>5} {t_off:7.3f} {t_on:7.3f}")
    total_off, total_on = sum(off_times), sum(on_times)
    print(f"offline (one final call): {offline:.2f} s")
    print(f"streaming, full re-run:   {total_off:.2f} s = {total_off / offline:.2f}x offline")
    print(f"streaming, incremental:   {total_on:.2f} s = {total_on / offline:.2f}x offline "
          f"(non-final {sum(on_times[:-1]):.2f} s + final {on_times[-1]:.2f} s)")
    total_chunked = sum(on_times[:-1]) + chunked_seconds
    print(f"incremental, chunked final (approximate switch): {total_chunked:.2f} s = "
          f"{total_chunked / offline:.2f}x offline (final {chunked_seconds:.2f} s)")
    print(f"max |incremental - full re-run| over all emitted frames: {deviation:.2e}")
    final_deviation = np.abs(chunked_final - off_mels[-1])
    print(f"chunked final vs full-attention final: max |d| {final_deviation.max():.3f}, mean |d| "
          f"{final_deviation.mean():.4f} (mel RMS {float(np.sqrt((off_mels[-1] ** 2).mean())):.2f})")
    print(f"caches before the final call: {cached_bytes / 2**20:.1f} MiB for {cached_frames} frames "
          f"({cached_bytes / max(cached_frames, 1) / 1024:.1f} KiB/frame)")


if __name__ == "__main__":
    main()
