"""Our flow on a CUDA device against the CPU reference (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from services.common.modeldir.layout import ModelDir
from services.flow.model.loader import load_flow
from tests.flow.conftest import MEL_TOLERANCE, make_request

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture
def no_tf32():
    """TF32 (on by default for cuDNN convs) alone exceeds the parity tolerance."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("streaming,finalize", [(False, True), (True, False)])
def test_cuda_float32_matches_cpu_reference(reference_flow, flow_model_dir, no_tf32, streaming, finalize):
    flow = load_flow(ModelDir.open(flow_model_dir), device="cuda")
    request = make_request(90, 9, seed=61)
    expected, _ = reference_flow.inference(*request.args(), streaming=streaming, finalize=finalize)
    actual = flow.inference(*request.args(), streaming=streaming, finalize=finalize)
    assert actual.device.type == "cuda" and actual.dtype == torch.float32
    assert (actual.cpu() - expected).abs().max().item() <= MEL_TOLERANCE


def test_cuda_half_precision_runs_batched(flow_model_dir):
    flow = load_flow(ModelDir.open(flow_model_dir), device="cuda", dtype=torch.float16)
    assert flow.decoder.rand_noise.dtype == torch.float16
    request = make_request(60, 5, seed=62)
    reference = load_flow(ModelDir.open(flow_model_dir), device="cuda")
    expected = reference.inference(*request.args(), streaming=False, finalize=True)
    actual = flow.inference(*request.args(), streaming=False, finalize=True)
    assert torch.isfinite(actual).all()
    assert (actual - expected).abs().max().item() < 0.25  # fp16 drift over 10 steps, not parity
