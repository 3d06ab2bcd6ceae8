"""Shared flow fixtures: the reference flow built from the tiny yaml, a model directory holding
its weights as flow.pt, our flow strictly loaded from it, and request builders."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from services.common.modeldir.layout import FLOW_CHECKPOINT, ModelDir
from services.flow.model.loader import load_flow
from tests.reference.flow import TINY_YAML, build_reference_flow, load_flow_node

MEL_TOLERANCE = 1e-4
PRE_LOOKAHEAD = 3
SPEECH_VOCAB = 6561


@pytest.fixture(scope="session")
def reference_flow() -> torch.nn.Module:
    return build_reference_flow(load_flow_node(TINY_YAML))


@pytest.fixture(scope="session")
def flow_model_dir(tmp_path_factory: pytest.TempPathFactory, reference_flow: torch.nn.Module) -> Path:
    root = tmp_path_factory.mktemp("flow_model")
    shutil.copy(TINY_YAML, root / "cosyvoice2.yaml")
    torch.save(reference_flow.state_dict(), root / FLOW_CHECKPOINT)
    return root


@pytest.fixture(scope="session")
def our_flow(flow_model_dir: Path) -> torch.nn.Module:
    return load_flow(ModelDir.open(flow_model_dir))


@dataclass
class Request:
    """One utterance's flow inputs, batch of one, in the reference's argument order."""

    token: torch.Tensor  # (1, N)
    prompt_token: torch.Tensor  # (1, P)
    prompt_feat: torch.Tensor  # (1, 2P, 80)
    embedding: torch.Tensor  # (1, 192)

    def args(self, n_tokens: int | None = None) -> tuple[torch.Tensor, ...]:
        token = self.token if n_tokens is None else self.token[:, :n_tokens]
        return (
            token, torch.tensor([token.size(1)]),
            self.prompt_token, torch.tensor([self.prompt_token.size(1)]),
            self.prompt_feat, torch.tensor([self.prompt_feat.size(1)]),
            self.embedding,
        )  # fmt: skip


def make_request(n_tokens: int, n_prompt: int, seed: int) -> Request:
    generator = torch.Generator().manual_seed(seed)
    return Request(
        token=torch.randint(0, SPEECH_VOCAB, (1, n_tokens), generator=generator, dtype=torch.int32),
        prompt_token=torch.randint(0, SPEECH_VOCAB, (1, n_prompt), generator=generator, dtype=torch.int32),
        prompt_feat=torch.randn(1, 2 * n_prompt, 80, generator=generator) * 2 - 5,  # log-mel-like
        embedding=torch.randn(1, 192, generator=generator) * 3,
    )


@dataclass(frozen=True)
class Chunk:
    n_tokens: int  # tokens passed to this call (look-ahead included when not final)
    token_offset: int  # tokens already emitted: the call keeps mel[:, :, 2 * token_offset:]
    finalize: bool


def upstream_chunk_schedule(n_tokens: int, n_prompt: int, hop: int = 25, max_hop: int = 100) -> list[Chunk]:
    """CosyVoice2Model.tts's streaming calls for a finished token list (upstream semantics:
    the first hop padded so prompt + hop is a multiple of 25, then the hop doubles to 100)."""
    prompt_pad = math.ceil(n_prompt / hop) * hop - n_prompt
    chunks, offset = [], 0
    while True:
        this_hop = hop + prompt_pad if offset == 0 else hop
        if n_tokens - offset < this_hop + PRE_LOOKAHEAD:
            break
        chunks.append(Chunk(offset + this_hop + PRE_LOOKAHEAD, offset, finalize=False))
        offset += this_hop
        hop = min(max_hop, hop * 2)
    chunks.append(Chunk(n_tokens, offset, finalize=True))
    return chunks


def run_both(reference: torch.nn.Module, ours: torch.nn.Module, request: Request, n_tokens: int | None,
             streaming: bool, finalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    args = request.args(n_tokens)
    expected, _ = reference.inference(*args, streaming=streaming, finalize=finalize)
    actual = ours.inference(*args, streaming=streaming, finalize=finalize)
    return expected, actual
