"""CPU speed of the flow estimator and HiFT's network on onnxruntime vs torch, side by side in
one process (runs interleaved, medians), plus how far bfloat16/float16 torch lands from float32.

    .venv/bin/python scripts/bench_backends.py --size full --repeats 5

--size full builds CosyVoice2-0.5B's dimensions with random weights (nothing is downloaded or
written but the temporary ONNX files); --size tiny uses the test model's. Speed depends on the
weights only through their shapes, so random weights time like the real ones; the dtype
deviations are of random weights and only indicate the order of magnitude. docs/backends.md
records a run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common.backends.onnx_graph import OnnxGraph  # noqa: E402
from services.common.modeldir.layout import ModelDir  # noqa: E402
from services.flow.backends.export import INPUT_NAMES as FLOW_INPUTS  # noqa: E402
from services.flow.backends.export import example_inputs as flow_inputs  # noqa: E402
from services.flow.backends.export import export_estimator  # noqa: E402
from services.flow.model.loader import build_flow  # noqa: E402
from services.tinymodel.writer import _write_yaml  # noqa: E402 - the full-size yaml, without 2.6 GB of weights
from services.vocoder.backends.export import INPUT_NAMES as HIFT_INPUTS  # noqa: E402
from services.vocoder.backends.export import example_inputs as hift_inputs  # noqa: E402
from services.vocoder.backends.export import export_network  # noqa: E402
from services.vocoder.model.loader import build_hift  # noqa: E402


def _time_ms(fn: Callable[[], object], times: list[float]) -> None:
    started = time.perf_counter()
    fn()
    times.append((time.perf_counter() - started) * 1000)


def side_by_side(name: str, torch_fn: Callable, onnx_fn: Callable, repeats: int) -> None:
    torch_fn(), onnx_fn()  # warm-up: allocator, ORT's first-run optimisations
    torch_ms: list[float] = []
    onnx_ms: list[float] = []
    for _ in range(repeats):  # interleaved, so load from other processes hits both alike
        _time_ms(torch_fn, torch_ms)
        _time_ms(onnx_fn, onnx_ms)
    diff = float((torch_fn() - onnx_fn()).abs().max())
    t, o = statistics.median(torch_ms), statistics.median(onnx_ms)
    print(f"{name:<32} torch {t:9.1f} ms   onnxruntime {o:9.1f} ms   onnxruntime/torch {o / t:5.2f}   "
          f"max|diff| {diff:.1e}")


def dtype_deviation(name: str, module: torch.nn.Module, call: Callable, inputs: tuple, repeats: int) -> None:
    with torch.inference_mode():
        reference = call(module.float(), inputs)
        started = time.perf_counter()
        for _ in range(repeats):
            call(module, inputs)
        fp32_ms = (time.perf_counter() - started) * 1000 / repeats
        scale = float(reference.abs().max())
        for dtype in (torch.bfloat16, torch.float16):
            try:
                low = module.to(dtype)
                cast = tuple(t.to(dtype) if t.is_floating_point() else t for t in inputs)
                started = time.perf_counter()
                for _ in range(repeats):
                    out = call(low, cast)
                ms = (time.perf_counter() - started) * 1000 / repeats
                diff = float((out.float() - reference).abs().max())
                print(f"{name:<32} {str(dtype)[6:]:>8} vs float32: max|diff| {diff:.2e} "
                      f"({diff / scale:.2%} of max|float32| {scale:.2f}); time {ms / fp32_ms:5.2f} x float32")
            except Exception as exc:  # noqa: BLE001 - a dtype the CPU kernels lack is a result too
                print(f"{name:<32} {str(dtype)[6:]:>8}: fails on this CPU: {str(exc).splitlines()[0][:100]}")
        module.float()


def stage_onnx_parity(model_dir: ModelDir, engine_dir: Path, jobs: list, vocode: Callable) -> None:
    """The stages' own outputs with the onnxruntime backend installed as the servers do it."""
    from services.common.backends.settings import BackendStageConfig
    from services.flow.backends import install_estimator_backend
    from services.flow.chunk_decoder import decode_chunk_batch
    from services.flow.model.loader import load_flow
    from services.vocoder.backends import install_network_backend
    from services.vocoder.model.loader import load_hift

    config = BackendStageConfig(model_dir=model_dir.root, backend="onnxruntime", engine_dir=engine_dir)
    flow = load_flow(model_dir)
    expected = decode_chunk_batch(flow, jobs)
    install_estimator_backend(flow, config, model_dir)
    actual = decode_chunk_batch(flow, jobs)
    mel_diff = max(float(abs(a - b).max()) for a, b in zip(actual, expected))
    reference_audio = vocode(load_hift(model_dir))
    hift = load_hift(model_dir)
    install_network_backend(hift, config, model_dir)
    audio = vocode(hift)
    print(f"tiny stage onnxruntime vs torch: flow chunk mel max|diff| {mel_diff:.2e} (streaming + final, batched); "
          f"vocoder stream audio max|diff| {float((audio - reference_audio).abs().max()):.2e}")


def stage_dtype_deviation(repeats: int) -> None:
    """Whole-stage outputs on the tiny model: a flow chunk (encoder + 10 Euler steps, streaming
    and final) and a vocoder stream, each loaded in bfloat16 and float16 vs float32."""
    from services.flow.chunk_decoder import ChunkJob, decode_chunk_batch, speaker_session
    from services.flow.model.loader import load_flow
    from services.tinymodel.writer import write_tiny_model
    from services.vocoder.model.loader import load_hift
    from services.vocoder.model.streaming import VocoderStream

    with tempfile.TemporaryDirectory() as work:
        model_dir = ModelDir.open(write_tiny_model(Path(work), seed=0))
        embedding = torch.randn(192, generator=torch.Generator().manual_seed(1))
        tokens = tuple(range(7, 7 + 90 * 37, 37))
        jobs = [ChunkJob(speaker_session(embedding), tokens[:53], 0, False),
                ChunkJob(speaker_session(embedding), tokens, 0, True)]
        mels = torch.randn(80, 120, generator=torch.Generator().manual_seed(2)) - 4

        def vocode(hift: torch.nn.Module) -> torch.Tensor:
            stream = VocoderStream(hift, torch.Generator().manual_seed(3))
            return torch.cat([stream.push(mels[:, :60]), stream.push(mels[:, 60:], final=True)]).float()

        stage_onnx_parity(model_dir, Path(work) / "engines", jobs, vocode)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            flow = load_flow(model_dir, "cpu", dtype)
            started = time.perf_counter()
            for _ in range(repeats):
                mel = decode_chunk_batch(flow, jobs)
            flow_ms = (time.perf_counter() - started) * 1000 / repeats
            audio = vocode(load_hift(model_dir, "cpu", dtype))
            if dtype == torch.float32:
                ref_mel, ref_audio, ref_ms = mel, audio, flow_ms
                continue
            mel_diff = max(float(abs(a - b).max()) for a, b in zip(mel, ref_mel))
            mel_scale = max(float(abs(b).max()) for b in ref_mel)
            audio_diff = float((audio - ref_audio).abs().max())
            print(f"tiny stage {str(dtype)[6:]:>8} vs float32: flow mel max|diff| {mel_diff:.2e} (of max {mel_scale:.1f}),"
                  f" flow time {flow_ms / ref_ms:4.2f} x; vocoder audio max|diff| {audio_diff:.2e} "
                  f"(of max {float(ref_audio.abs().max()):.2f})")


def compile_check() -> None:
    """torch.compile on the tiny model: compile time of the flow's first streaming and first
    final chunk and of HiFT's first chunk, and each one's difference from eager."""
    from services.flow.chunk_decoder import ChunkJob, decode_chunk_batch, speaker_session
    from services.flow.model.loader import load_flow
    from services.tinymodel.writer import write_tiny_model

    with tempfile.TemporaryDirectory() as work:
        flow = load_flow(ModelDir.open(write_tiny_model(Path(work), seed=0)))
    streaming = [ChunkJob(speaker_session(torch.ones(192)), tuple(range(60)), 0, False)]
    final = [ChunkJob(speaker_session(torch.ones(192)), tuple(range(90)), 0, True)]
    expected = decode_chunk_batch(flow, streaming)
    estimator = flow.decoder.estimator
    estimator.velocity = torch.compile(estimator.velocity, dynamic=True)
    for name, jobs in (("streaming", streaming), ("final", final)):
        started = time.perf_counter()
        actual = decode_chunk_batch(flow, jobs)
        print(f"torch.compile: first {name} chunk {time.perf_counter() - started:.0f} s")
        if name == "streaming":
            print(f"torch.compile: max|compiled - eager| {max(float(abs(a - e).max()) for a, e in zip(actual, expected)):.1e}")
    from services.vocoder.model.loader import load_hift
    from services.vocoder.model.streaming import VocoderStream

    with tempfile.TemporaryDirectory() as work:
        hift = load_hift(ModelDir.open(write_tiny_model(Path(work), seed=0)))
    mel = torch.randn(80, 40, generator=torch.Generator().manual_seed(1)) - 4
    expected_audio = VocoderStream(hift, torch.Generator().manual_seed(1)).push(mel, final=True)
    hift.network = torch.compile(hift.network, dynamic=True)
    started = time.perf_counter()
    audio = VocoderStream(hift, torch.Generator().manual_seed(1)).push(mel, final=True)
    print(f"torch.compile: HiFT first chunk {time.perf_counter() - started:.0f} s, "
          f"max|compiled - eager| {float((audio - expected_audio).abs().max()):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "full"), default="full")
    parser.add_argument("--frames", type=int, default=200, help="estimator mel frames (batch 2: guidance)")
    parser.add_argument("--hift-frames", type=int, default=50, help="HiFT mel frames (one chunk)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--skip-dtypes", action="store_true")
    parser.add_argument("--compile-check", action="store_true", help="only time torch.compile on the tiny flow and HiFT")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.compile_check:
        compile_check()
        return
    torch.manual_seed(0)
    print(f"size={args.size} threads={args.threads} repeats={args.repeats} load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        _write_yaml(root, full_size=args.size == "full")
        model_dir = ModelDir.open(root)
        estimator = build_flow(model_dir).decoder.estimator.eval()
        hift = build_hift(model_dir).eval()
        with torch.no_grad():
            hift.f0_predictor.classifier.bias.fill_(150.0)  # voiced, as the tiny model writer does
        export_estimator(estimator, root / "estimator.onnx")
        export_network(hift, root / "hift.onnx")
        flow_graph = OnnxGraph(root / "estimator.onnx", "cpu", args.threads)
        hift_graph = OnnxGraph(root / "hift.onnx", "cpu", args.threads)

        flow_in = flow_inputs(estimator, 2, args.frames)
        hift_in = hift_inputs(hift, 1, args.hift_frames)
        with torch.inference_mode():
            side_by_side(
                f"flow estimator T={args.frames} B=2",
                lambda: estimator(*flow_in[:6], streaming=flow_in[6] > 0.5),
                lambda: flow_graph(dict(zip(FLOW_INPUTS, flow_in)), tuple(flow_in[0].shape)),
                args.repeats,
            )
            side_by_side(
                f"hift network T={args.hift_frames} B=1",
                lambda: hift.network(*hift_in),
                lambda: hift_graph(dict(zip(HIFT_INPUTS, hift_in)), tuple(hift_in[1].shape)),
                args.repeats,
            )
        if not args.skip_dtypes:
            dtype_deviation(f"flow estimator T={args.frames} B=2", estimator,
                            lambda m, i: m(*i[:6], streaming=i[6] > 0.5), flow_in, max(1, args.repeats // 2))
            dtype_deviation(f"hift network T={args.hift_frames} B=1", hift, lambda m, i: m.network(*i), hift_in,
                            max(1, args.repeats // 2))
            stage_dtype_deviation(max(1, args.repeats // 2))


if __name__ == "__main__":
    main()
