"""`cosyvoice export` as a real process: onnx writes both graphs where the stages look for them
and prints their measured difference from torch; trt without a GPU, and bad arguments, are one
line on stderr with exit 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from services.common.modeldir.layout import ModelDir
from services.flow.backends.export import estimator_onnx_path
from services.vocoder.backends.export import network_onnx_path
from tests.conftest import ROOT

PROG = "cosyvoice export"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", "export", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ})


def test_onnx_writes_both_graphs_and_their_difference_from_torch(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = run_cli("onnx", "--model-dir", str(tiny_model_dir), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    model_dir = ModelDir.open(tiny_model_dir)
    flow_path, hift_path = estimator_onnx_path(model_dir, tmp_path), network_onnx_path(model_dir, tmp_path)
    assert flow_path.is_file() and hift_path.is_file()
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["flow estimator", "hift network"]
    for line, path in zip(lines, (flow_path, hift_path)):
        assert str(path) in line
        diff = float(re.search(r"max \|onnxruntime - torch\| = (\S+) at 37/120/401 frames", line).group(1))
        assert diff < 1e-3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal; this machine has a GPU")
def test_trt_without_a_gpu_is_one_line_and_exit_2(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = run_cli("trt", "--model-dir", str(tiny_model_dir), "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{PROG}: trt: TensorRT engines are built on the GPU that runs them, and torch sees no CUDA GPU"
    ]
    assert not list(tmp_path.iterdir())  # refused before exporting anything


def test_trt_on_a_cpu_device_is_refused(tiny_model_dir: Path) -> None:
    result = run_cli("trt", "--model-dir", str(tiny_model_dir), "--device", "cpu")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"{PROG}: trt: --device must be a CUDA device, got 'cpu'"]


@pytest.mark.parametrize("args, message", [
    (["onnx", "--model-dir", "{model}", "--dtype", "float16"],
     "--dtype: ONNX graphs are exported in float32; --dtype sets a TensorRT engine's precision"),
    (["onnx", "--model-dir", "{model}", "--min-frames", "900"], "--min-frames <= --opt-frames <= --max-frames must hold"),
    (["tflite", "--model-dir", "{model}"], "argument format: invalid choice: 'tflite'"),  # then the choices
])
def test_bad_arguments_exit_2_naming_them(tiny_model_dir: Path, args: list[str], message: str) -> None:
    result = run_cli(*(a.replace("{model}", str(tiny_model_dir)) for a in args))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(f"{PROG}: error: {message}")


def test_a_missing_model_dir_is_one_line(tmp_path: Path) -> None:
    result = run_cli("onnx", "--model-dir", str(tmp_path / "nope"))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{PROG}: model directory {tmp_path / 'nope'} does not exist or is not a directory"
    ]
