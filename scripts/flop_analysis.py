#!/usr/bin/env python3
"""What batching can buy the flow and the LLM on this CPU: throughput and achieved FLOP/s per
batch size, against the machine's measured float32 matmul peak, all in one run.

1. Peak: a square float32 matmul (torch.mm, n = --matmul-n) on 1 and 2 threads, best of runs.
2. Flow (the stage's own `decode_chunk_batch`, random-weight model of --model-dir): B streams'
   non-final chunks of 28 tokens (a first chunk: 25 + 3 look-ahead) and of 78 tokens (a
   second chunk re-decodes 25 + 50 + 3), B = 1, 2, 4, 8, all in one batch. Throughput in
   chunks/s and its ratio to B = 1; FLOPs of one call counted by
   torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions, attention; elementwise
   ops are not counted, so achieved FLOP/s is a lower bound).
3. Flow batch forming: 4 × 28-token + 4 × 78-token chunks waiting together, run as the
   runner does (length_buckets, padding ≤ 1.2×: two batches), as one padded batch of 8, and
   one by one.
4. The incremental flow path (per-stream caches, the streams' windows batched) for a first
   chunk (28 tokens) and a second one (78 tokens, 53 of them new), B = 1, 2, 4, 8.
5. LLM forward (backbone + speech head for one decode token per stream, context 100
   positions), B = 1, 4, 16, 64: tokens/s, ratio to B = 1, FLOPs and FLOP/s.

Usage: python scripts/flop_analysis.py [--model-dir DIR] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.common.batching import length_buckets  # noqa: E402
from services.common.modeldir.layout import ModelDir  # noqa: E402
from services.flow.chunk_decoder import ChunkJob, FlowSession, decode_chunk_batch, decode_incremental  # noqa: E402
from services.flow.incremental import IncrementalFlow  # noqa: E402
from services.flow.model.loader import load_flow  # noqa: E402
from services.llm.model.loader import load_llm  # noqa: E402

FLOW_BATCHES = (1, 2, 4, 8)
LLM_BATCHES = (1, 4, 16, 64)
CHUNKS = {28: 0, 78: 25}  # tokens decoded → tokens already emitted (offset)
LLM_CONTEXT = 100


def timed(fn: Callable[[], object], min_seconds: float, min_runs: int = 3) -> float:
    """Best seconds per call over at least `min_runs` calls and `min_seconds` (after one warm
    call): on a shared machine the fastest run is the one least disturbed by others."""
    fn()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(n: int, threads: int, min_seconds: float) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    fn = lambda: torch.mm(a, b)  # noqa: E731
    fn()
    best = min(timed(fn, min_seconds / 3) for _ in range(3))
    return 2 * n**3 / best


def flow_jobs(flow: torch.nn.Module, length: int, count: int, seed: int = 0) -> list[ChunkJob]:
    generator = torch.Generator().manual_seed(seed)
    vocab = int(flow.input_embedding.num_embeddings)
    jobs = []
    for _ in range(count):
        session = FlowSession(torch.zeros(0, dtype=torch.long), torch.zeros(0, 80), torch.randn(192, generator=generator))
        tokens = tuple(torch.randint(0, vocab, (length,), generator=generator).tolist())
        jobs.append(ChunkJob(session, tokens, CHUNKS[length], finalize=False))
    return jobs


def bench_flow(flow: torch.nn.Module, min_seconds: float) -> list[dict]:
    rows = []
    for length in CHUNKS:
        base = None
        for batch in FLOW_BATCHES:
            jobs = flow_jobs(flow, length, batch)
            call = lambda: decode_chunk_batch(flow, jobs)  # noqa: E731
            seconds = timed(call, min_seconds)
            flops = count_flops(call)
            throughput = batch / seconds
            base = base or throughput
            rows.append({"tokens": length, "batch": batch, "ms_per_call": 1e3 * seconds, "chunks_per_s": throughput,
                         "ratio": throughput / base, "gflop_per_call": flops / 1e9, "gflop_per_s": flops / seconds / 1e9})
            print(f"flow {length:>3} tokens  B={batch:<2} {1e3 * seconds:8.1f} ms/call  {throughput:7.2f} chunks/s  "
                  f"{throughput / base:5.2f}×  {flops / 1e9:7.3f} GFLOP  {flops / seconds / 1e9:6.2f} GFLOP/s", flush=True)
    return rows


def bench_batch_forming(flow: torch.nn.Module, padding: float, min_seconds: float) -> dict:
    jobs = flow_jobs(flow, 28, 4, seed=1) + flow_jobs(flow, 78, 4, seed=2)
    lengths = [len(j.tokens) for j in jobs]
    groups = length_buckets(lengths, padding)

    def bucketed() -> None:
        for group in groups:
            decode_chunk_batch(flow, [jobs[i] for i in group])

    variants = {
        f"length_buckets (≤{padding}× padding): {len(groups)} batches of {[len(g) for g in groups]}": bucketed,
        "one padded batch of 8": lambda: decode_chunk_batch(flow, jobs),
        "one by one (8 calls)": lambda: [decode_chunk_batch(flow, [j]) for j in jobs],
    }
    result = {}
    for name, fn in variants.items():
        seconds = timed(fn, min_seconds)
        result[name] = 1e3 * seconds
        print(f"flow mix 4×28 + 4×78  {name:<55} {1e3 * seconds:8.1f} ms", flush=True)
    return result


def bench_incremental(flow: torch.nn.Module, runs: int) -> list[dict]:
    """The incremental path (COSYVOICE_FLOW_INCREMENTAL: each stream's caches; the runner batches
    the streams' ODE windows): B streams' first chunk (28 tokens) and second (78 tokens, 53 new)."""
    from services.flow.model.config import REFERENCE_N_TIMESTEPS

    rows = []
    for name in ("first", "second"):
        base = None
        for batch in FLOW_BATCHES:
            firsts = flow_jobs(flow, 28, batch, seed=3)
            seconds_jobs = [ChunkJob(f.session, f.tokens[:25] + s.tokens[25:], 25, finalize=False)
                            for f, s in zip(firsts, flow_jobs(flow, 78, batch, seed=4))]
            jobs = firsts if name == "first" else seconds_jobs
            times, flops = [], 0
            for run in range(runs + 2):  # one warm call, `runs` timed, then one counted
                states = [IncrementalFlow(flow, j.session.prompt_mel, j.session.embedding, REFERENCE_N_TIMESTEPS)
                          for j in jobs]
                if name == "second":
                    decode_incremental(flow, firsts, states)
                if run == runs + 1:  # the counter's dispatch slows the call: counted apart
                    flops = count_flops(lambda: decode_incremental(flow, jobs, states))
                    break
                t0 = time.perf_counter()
                decode_incremental(flow, jobs, states)
                if run:
                    times.append(time.perf_counter() - t0)
            seconds = min(times)
            throughput = batch / seconds
            base = base or throughput
            new = len(jobs[0].tokens) - jobs[0].offset
            rows.append({"chunk": name, "tokens": len(jobs[0].tokens), "new_tokens": new, "batch": batch,
                         "ms_per_call": 1e3 * seconds, "chunks_per_s": throughput, "ratio": throughput / base,
                         "gflop_per_call": flops / 1e9, "gflop_per_s": flops / seconds / 1e9})
            print(f"flow incremental {name:<6} ({len(jobs[0].tokens)} tokens, {new} new) B={batch:<2}"
                  f"{1e3 * seconds:8.1f} ms/call  {throughput:7.2f} chunks/s  {throughput / base:5.2f}×  "
                  f"{flops / 1e9:7.3f} GFLOP  {flops / seconds / 1e9:6.2f} GFLOP/s", flush=True)
    return rows


@torch.inference_mode()
def bench_llm(model: torch.nn.Module, min_seconds: float) -> list[dict]:
    cache = model.new_kv_cache(max(LLM_BATCHES), LLM_CONTEXT + 8)
    rows = []
    base = None
    for batch in LLM_BATCHES:
        tokens = torch.randint(0, int(model.speech_embedding.num_embeddings), (batch,))
        plan = cache.plan(list(range(batch)), [LLM_CONTEXT] * batch, [1] * batch)

        def step() -> torch.Tensor:
            hidden = model(model.embed_speech_tokens(tokens).unsqueeze(1), plan, cache)[:, 0]
            return model.log_probs(hidden)

        seconds = timed(step, min_seconds)
        flops = count_flops(step)
        throughput = batch / seconds
        base = base or throughput
        rows.append({"batch": batch, "ms_per_step": 1e3 * seconds, "tokens_per_s": throughput,
                     "ratio": throughput / base, "mflop_per_step": flops / 1e6, "gflop_per_s": flops / seconds / 1e9})
        print(f"llm  forward       B={batch:<3}{1e3 * seconds:8.2f} ms/step  {throughput:8.0f} tokens/s  "
              f"{throughput / base:5.2f}×  {flops / 1e6:8.1f} MFLOP  {flops / seconds / 1e9:6.2f} GFLOP/s", flush=True)
    return rows


def profile_flow(flow: torch.nn.Module, length: int, batch: int, rows: int = 12) -> str:
    """torch.profiler's top operators by self CPU time for one batched flow call."""
    from torch.profiler import ProfilerActivity, profile

    jobs = flow_jobs(flow, length, batch)
    decode_chunk_batch(flow, jobs)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        decode_chunk_batch(flow, jobs)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    print(f"\nflow {length} tokens B={batch}: top operators by self CPU time\n{table}", flush=True)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="model directory (default: the tiny model, written if missing)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the flow and LLM (the stages' 1)")
    parser.add_argument("--matmul-n", type=int, default=1024)
    parser.add_argument("--min-seconds", type=float, default=1.0, help="timing per measurement")
    parser.add_argument("--profile", action="store_true", help="also print the flow's top operators (78 tokens, B=1 and 8)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    from services.cli.up import ensure_model_dir

    model_dir = ModelDir.open(ensure_model_dir(str(args.model_dir) if args.model_dir else None))
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, nproc {os.cpu_count()}, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; model {model_dir.root}", flush=True)
    # The peak is measured before every section and the best one counts: on a shared machine
    # any single measurement can be the disturbed one, and the work is timed best-of too.
    peaks: dict[int, list[float]] = {1: [], 2: []}

    def measure_peaks() -> None:
        for t in peaks:
            peaks[t].append(matmul_peak(args.matmul_n, t, args.min_seconds / 2))
        torch.set_num_threads(args.threads)

    measure_peaks()
    flow = load_flow(model_dir)
    flow_rows = bench_flow(flow, args.min_seconds)
    measure_peaks()
    forming = bench_batch_forming(flow, 1.2, args.min_seconds)
    incremental = bench_incremental(flow, runs=3)
    profiles = {f"78x{b}": profile_flow(flow, 78, b) for b in (1, 8)} if args.profile else {}
    measure_peaks()
    llm_rows = bench_llm(load_llm(model_dir), args.min_seconds)
    measure_peaks()
    best = {t: max(v) for t, v in peaks.items()}
    peak = best.get(args.threads) or best[1]
    for t, values in peaks.items():
        print(f"\npeak float32 matmul {args.matmul_n}³, {t} thread(s): best {best[t] / 1e9:.1f} GFLOP/s "
              f"(measured {', '.join(f'{v / 1e9:.1f}' for v in values)})", end="")
    print(f"\n\n% of the {args.threads}-thread peak ({peak / 1e9:.1f} GFLOP/s):")
    for title, rows, key in (("flow, one padded batch", flow_rows, "tokens"),
                             ("flow incremental", incremental, "chunk"), ("llm forward", llm_rows, None)):
        for row in rows:
            row["fraction_of_peak"] = row["gflop_per_s"] * 1e9 / peak
            label = f"{title} {row[key] if key else ''}".strip()
            print(f"  {label:<34} B={row['batch']:<3} {row['ratio']:5.2f}× B=1   {row['gflop_per_s']:6.2f} GFLOP/s  "
                  f"{100 * row['fraction_of_peak']:5.1f} %")
    if args.json:
        args.json.write_text(json.dumps({
            "config": {"model_dir": str(model_dir.root), "threads": args.threads, "matmul_n": args.matmul_n,
                       "nproc": os.cpu_count(), "load_average_before": load, "torch": torch.__version__},
            "peak_gflop_per_s": {str(t): [v / 1e9 for v in values] for t, values in peaks.items()},
            "peak_used_gflop_per_s": peak / 1e9,
            "flow": flow_rows, "flow_batch_forming_ms": forming,
            "flow_incremental": incremental, "llm_forward": llm_rows, "flow_profiles": profiles,
            "load_average_after": os.getloadavg(),
        }, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
