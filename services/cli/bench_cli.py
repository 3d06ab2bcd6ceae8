"""The `cosyvoice bench` command line: end to end (split vs monolith) or `stages`, once per
--backend × --dtype variant, then the tables, the comparison, --json and --plot.

Every mistake in the options is one line on stderr and exit status 2, before anything starts.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from services.cli import bench
from services.cli.bench_report import SYSTEMS, check_targets, format_table, format_targets, jsonable
from services.cli.bench_variants import (
    Variant,
    VariantError,
    applied,
    compare_e2e,
    compare_stages,
    format_e2e_comparison,
    format_stage_comparison,
    make_variants,
    parse_list,
    validate_variants,
)

PROG = "cosyvoice bench"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        fail(message, self.prog)


def fail(message: str, prog: str = PROG) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def build_parser(stages: bool = False) -> argparse.ArgumentParser:
    from services.cli import bench_stages

    prog = f"{PROG} stages" if stages else PROG
    doc = bench_stages.__doc__ if stages else bench.__doc__
    parser = _Parser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", help="CosyVoice2 model directory (default: the tiny model, written if missing)")
    if not stages:
        parser.add_argument("--address", help="benchmark this running gateway instead of starting the split stack "
                            "(the monolith still loads --model-dir: pass the gateway's)")
        parser.add_argument("--only", choices=SYSTEMS, help="benchmark one system only")
        parser.add_argument("--warmup", type=int, default=2, help="unmeasured requests per system before the levels")
        parser.add_argument("--speaker-id", default="", help="preset speaker (default: the model's)")
    parser.add_argument("--concurrency", type=bench._parse_concurrencies, default=list(bench.DEFAULT_CONCURRENCIES),
                        help="comma-separated levels (default 1,4,8,16)")
    default_requests = "2 × C, at least 4" if stages else f"2 × C, at least {bench.MIN_REQUESTS}"
    parser.add_argument("--requests", type=int, default=None, help=f"requests per level (default: {default_requests})")
    parser.add_argument("--text", action="append", default=None,
                        help="a request text; repeat for several, used round-robin (default: 4 built-in sentences)")
    parser.add_argument("--texts-file", help="request texts, one per line")
    parser.add_argument("--seed", type=int, default=0, help="request i uses seed SEED + i")
    parser.add_argument("--num-threads", type=int, default=1,
                        help="torch CPU threads per stage (default 1; 0: torch's default)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: stage i on GPU i mod count")
    parser.add_argument("--backend", help="comma-separated flow/vocoder backends (torch, torch-compile, onnxruntime, "
                        "tensorrt): one run per backend, compared with the first")
    parser.add_argument("--dtype", help="comma-separated dtypes of the three model stages (float32, float16, "
                        "bfloat16): one run per dtype (× backend)")
    parser.add_argument("--plot", metavar="DIR", help="write PNG charts into DIR")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for each stage process")
    parser.add_argument("--json", dest="json_path", help="also write the results as JSON to this path")
    return parser


def _texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.text or [])
    if args.texts_file:
        try:
            texts += [line.strip() for line in Path(args.texts_file).read_text().splitlines() if line.strip()]
        except OSError as error:
            fail(f"--texts-file: {error.strerror}: {args.texts_file}")
    return texts or list(bench.DEFAULT_TEXTS)


def thread_env(num_threads: int) -> dict[str, str]:
    env = dict(os.environ)
    if num_threads > 0:
        env.update({name: str(num_threads) for name in bench.THREAD_ENV})
    return env


def parse_variants(args: argparse.Namespace) -> list[Variant]:
    """The variants the options name, checked by the stages' own configs; fail() otherwise."""
    try:
        backends = parse_list(args.backend, "backend") if args.backend is not None else None
        dtypes = parse_list(args.dtype, "dtype") if args.dtype is not None else None
        variants = make_variants(backends, dtypes)
        if backends or dtypes:
            if getattr(args, "address", None):
                raise VariantError("--backend/--dtype set the stages' settings: they need the bench to start the "
                                   "stack (no --address)")
            validate_variants(variants, args.device)
    except VariantError as error:
        fail(str(error))
    return variants


def _start(model_dir: Path, args: argparse.Namespace) -> list[Any]:
    from services.cli.up import start_stack, wait_serving

    print(f"starting the stack (5 processes, {args.num_threads or 'default'} torch thread(s) per stage)",
          file=sys.stderr, flush=True)
    stage_args = ["--num-threads", str(args.num_threads), "--log-level", "WARNING"]
    children = start_stack(model_dir, args.device, "127.0.0.1", 0, args.start_timeout, stage_args,
                           ["--log-level", "WARNING"], thread_env(args.num_threads))
    if not wait_serving(children[0].address, args.start_timeout):
        from services.cli.up import stop_all

        stop_all(children, grace=10.0)
        raise SystemExit(f"{PROG}: the gateway at {children[0].address} did not become SERVING")
    return children


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def _run_e2e(args: argparse.Namespace, address: str | None, model_dir: Path | None, texts: list[str]) -> list:
    targets: dict[str, Any] = {}
    try:
        if address is not None:
            targets["split"] = bench.GatewayTarget(address)
        if model_dir is not None:
            _log(f"loading the monolith from {model_dir}")
            targets["monolith"] = bench.MonolithTarget(await bench.load_monolith(model_dir, args.device, args.num_threads))
        return await bench.run_bench(targets, args.concurrency, texts, args.seed, args.requests, args.warmup,
                                     args.timeout, args.speaker_id, _log)
    finally:
        for target in targets.values():
            await target.close()


def run_variant(args: argparse.Namespace, stages: bool, model_dir: Path | None, texts: list[str]) -> dict[str, Any]:
    """One variant (its environment already applied): start what it needs, measure, stop."""
    from services.cli.bench_stages import run_stages
    from services.cli.up import stop_all

    children: list[Any] = []
    try:
        if stages:
            assert model_dir is not None
            children = _start(model_dir, args)
            addresses = {c.name: c.address for c in children}
            metrics = {c.name: f"http://{c.metrics_address}/metrics" for c in children if c.metrics_address}
            policy = bench.gateway_config().chunk_policy
            results = asyncio.run(run_stages(addresses, args.concurrency, texts, policy, args.seed, args.requests,
                                             args.timeout, _log, metrics))
            return {"stages": results}
        run_split = args.only in (None, "split")
        run_monolith = args.only in (None, "monolith")
        address = args.address if run_split else None
        if run_split and not args.address:
            assert model_dir is not None
            children = _start(model_dir, args)
            address = children[0].address
        levels = asyncio.run(_run_e2e(args, address, model_dir if run_monolith else None, texts))
        return {"levels": levels, "targets": check_targets(levels)}
    finally:
        stop_all(children, grace=10.0)


def machine() -> dict[str, Any]:
    """What the numbers were taken on: cores and load (a busy machine must say so)."""
    load = os.getloadavg()
    return {"nproc": os.cpu_count(), "load_average_1_5_15": [round(v, 2) for v in load]}


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(argv or [])
    if argv and argv[0] == "voices":  # `cosyvoice bench voices`: registered vs inline prompts
        from services.cli.bench_voices import main as voices_main

        voices_main(argv[1:])
        return
    stages = bool(argv) and argv[0] == "stages"
    args = build_parser(stages).parse_args(argv[1:] if stages else argv)
    if args.num_threads < 0 or (args.requests is not None and args.requests < 1) or getattr(args, "warmup", 0) < 0:
        fail("--num-threads and --warmup must be >= 0, --requests >= 1")
    texts = _texts(args)
    variants = parse_variants(args)
    # Before torch is imported in this process (tiny-model writer, monolith): OpenMP reads it once.
    os.environ.update({k: v for k, v in thread_env(args.num_threads).items() if k in bench.THREAD_ENV})
    from services.cli.up import ensure_model_dir

    needs_model = stages or args.only != "split" or not args.address
    model_dir = ensure_model_dir(args.model_dir) if needs_model else None
    before = machine()
    runs = []
    for variant in variants:
        if len(variants) > 1:
            _log(f"variant {variant.name}: {' '.join(f'{k}={v}' for k, v in variant.env().items())}")
        with applied(variant.env()):
            run = run_variant(args, stages, model_dir, texts)
        runs.append({"variant": variant.name, "env": variant.env(), **run})
    report(args, stages, runs, model_dir, texts, {"before": before, "after": machine()})


def report(args: argparse.Namespace, stages: bool, runs: list[dict[str, Any]], model_dir: Path | None,
           texts: list[str], load: dict[str, Any]) -> None:
    from services.cli.bench_stages import format_stage_table

    where = "stages alone over gRPC" if stages else (
        f"gateway {args.address}" if getattr(args, "address", None) else "split stack started here (5 processes)")
    print(f"\n{PROG}{' stages' if stages else ''}: model {model_dir or '(the gateway’s)'}; {where}; device "
          f"{args.device}; torch threads per stage {args.num_threads or 'default'}; {len(texts)} texts; "
          f"nproc {load['before']['nproc']}, load average {load['before']['load_average_1_5_15']} before, "
          f"{load['after']['load_average_1_5_15']} after\n")
    for run in runs:
        if len(runs) > 1:
            print(f"== variant {run['variant']}")
        if stages:
            print(format_stage_table(run["stages"]) + "\n")
        else:
            print(format_table(run["levels"]))
            if run["targets"]:
                print("targets:\n" + format_targets(run["targets"]) + "\n")
    comparison = None
    if len(runs) > 1:
        comparison = compare_stages(runs) if stages else compare_e2e(runs)
        print(f"comparison (× = ratio to {runs[0]['variant']}):" if not stages else
              f"comparison (× 1st C: to the stage's first level; × 1st var: to {runs[0]['variant']}):")
        print((format_stage_comparison if stages else format_e2e_comparison)(comparison))
    if args.plot:
        from services.cli.bench_plot import plot_e2e, plot_stages

        subtitle = f"{model_dir.name if model_dir else 'gateway'}, {args.device}, load {load['before']['load_average_1_5_15'][0]}"
        paths = (plot_stages if stages else plot_e2e)(runs, Path(args.plot), subtitle)
        print("\nwrote " + ", ".join(str(p) for p in paths))
    if args.json_path:
        config = {k: v for k, v in vars(args).items() if k != "json_path"}
        config.update({"model_dir": str(model_dir) if model_dir else None, "texts": texts, "mode":
                       "stages" if stages else "end_to_end", "cpu_count": os.cpu_count(), "load": load})
        result: dict[str, Any] = {"config": config}
        if stages:
            result["variants"] = [{**run, "stages": {k: [dataclasses.asdict(s) for s in v]
                                                     for k, v in run["stages"].items()}} for run in runs]
        else:
            result.update({"levels": runs[0]["levels"], "targets": runs[0]["targets"], "variants": runs})
        if comparison is not None:
            result["comparison"] = comparison
        Path(args.json_path).write_text(json.dumps(jsonable(result), indent=2, ensure_ascii=False) + "\n")
        print(f"\nwrote {args.json_path}")
