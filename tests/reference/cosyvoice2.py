"""The reference's whole CosyVoice 2 model (`cosyvoice.cli.model.CosyVoice2Model`) as an oracle
for the streaming orchestration, built from a model directory written by `make-tiny-model`.

- `load_reference_stages` builds the reference `Qwen2LM`, `CausalMaskedDiffWithXvec` and
  `HiFTGenerator` with the directory's yaml hyperparameters and loads `llm.pt`, `flow.pt` and
  `hift.pt` into them with `strict=True` (the vendored loader would fall back to strict=False
  for the LLM, see toolchain §8).
- `ReferenceTTS` drives the reference's own `CosyVoice2Model.tts` call sequence with three
  test-side changes, and records every stage call:
  * the LLM thread (`llm_job`) is replaced by one that appends a fixed token list, so the
    schedule depends only on the tokens;
  * upstream's growing hop (cosyvoice-facts §6.2: `token_hop_len = min(100, hop * 2)` right
    after every non-final `token2wav`), which the vendored package lacks, is recreated by
    wrapping `token2wav`;
  * `token_hop_len` is reset to 25 before each request: our per-request semantics, instead of
    upstream's hop that persists across requests (facts §10 quirk 1).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from services.common.modeldir.layout import FLOW_CHECKPOINT, HIFT_CHECKPOINT, LLM_CHECKPOINT, ModelDir
from tests.reference import ref
from tests.reference.flow import build_reference_flow
from tests.reference.hift import build_reference_hift
from tests.reference.llm import build_reference_qwen2lm

# Upstream CosyVoice2Model constants (cosyvoice-facts §6.2).
UPSTREAM_BASE_HOP = 25
UPSTREAM_MAX_HOP = 100
UPSTREAM_SCALE_FACTOR = 2


def _read(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_reference_llm(model_dir: ModelDir) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        llm = build_reference_qwen2lm(model_dir)
    llm.load_state_dict(_read(model_dir.require(LLM_CHECKPOINT)), strict=True)
    return llm.eval()


def load_reference_flow(model_dir: ModelDir) -> nn.Module:
    # build_reference_flow restores the global RNGs the reference CFM reseeds when built.
    flow = build_reference_flow(model_dir.stage_config("flow"), perturb=0.0)
    flow.load_state_dict(_read(model_dir.require(FLOW_CHECKPOINT)), strict=True)
    return flow.eval()


def load_reference_hift(model_dir: ModelDir) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        hift = build_reference_hift(model_dir.stage_config("hift"))
    # What CosyVoiceModel.load does to hift.pt's keys, then a strict load.
    state = {key.replace("generator.", ""): value for key, value in _read(model_dir.require(HIFT_CHECKPOINT)).items()}
    hift.load_state_dict(state, strict=True)
    return hift.eval()


def load_reference_stages(model_dir: ModelDir) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(Qwen2LM, CausalMaskedDiffWithXvec, HiFTGenerator), strictly loaded from the directory."""
    return load_reference_llm(model_dir), load_reference_flow(model_dir), load_reference_hift(model_dir)


@dataclass
class Token2WavCall:
    num_tokens: int  # tokens passed (look-ahead included when not final)
    token_offset: int
    stream: bool
    finalize: bool
    hop_after: int  # model.token_hop_len once the call (and the hop growth) is done
    mel: torch.Tensor | None = None  # flow output sliced at token_offset, (80, frames)
    hift_mel: torch.Tensor | None = None  # the HiFT input: cached frames + new, (80, frames)
    cache_source: torch.Tensor | None = None  # (1, 1, L), L = 0 on the first call
    speech: torch.Tensor | None = None  # raw HiFT output before crossfade, (samples,)
    source: torch.Tensor | None = None  # the excitation HiFT used (cache applied), (1, 1, samples)
    emitted: torch.Tensor | None = None  # what tts yielded for this call, (samples,)


@dataclass
class ReferenceRun:
    calls: list[Token2WavCall] = field(default_factory=list)
    hop_at_start: int = 0

    @property
    def schedule(self) -> list[tuple[int, int, bool]]:
        return [(c.num_tokens, c.token_offset, c.finalize) for c in self.calls]


class ReferenceTTS:
    """The reference `CosyVoice2Model` with a fixed-token LLM, upstream's hop growth, and
    per-call recording of token2wav / flow.inference / hift.inference."""

    def __init__(self, llm: nn.Module, flow: nn.Module, hift: nn.Module) -> None:
        model_module = ref("cosyvoice.cli.model")
        self.model = model_module.CosyVoice2Model(llm, flow, hift)
        self._tokens: list[int] = []
        self._run: ReferenceRun | None = None
        self._install_hooks()

    @classmethod
    def from_model_dir(cls, model_dir: ModelDir) -> "ReferenceTTS":
        return cls(*load_reference_stages(model_dir))

    def _install_hooks(self) -> None:
        model = self.model
        token2wav = model.token2wav
        flow_inference = model.flow.inference
        hift_inference = model.hift.inference

        def llm_job(text, prompt_text, llm_prompt_speech_token, llm_embedding, uuid):  # noqa: ANN001
            model.tts_speech_token_dict[uuid].extend(self._tokens)
            model.llm_end_dict[uuid] = True

        def recording_token2wav(token, prompt_token, prompt_feat, embedding, token_offset, uuid,
                                stream=False, finalize=False, speed=1.0):  # noqa: ANN001
            call = Token2WavCall(int(token.shape[1]), int(token_offset), bool(stream), bool(finalize), 0)
            self._current.calls.append(call)
            speech = token2wav(token, prompt_token, prompt_feat, embedding, token_offset, uuid,
                               stream=stream, finalize=finalize, speed=speed)
            if not finalize:  # upstream (facts §6.2): grow the hop right after a non-final chunk
                model.token_hop_len = min(UPSTREAM_MAX_HOP, model.token_hop_len * UPSTREAM_SCALE_FACTOR)
            call.hop_after = model.token_hop_len
            call.emitted = speech.detach().reshape(-1).clone()
            return speech

        def recording_flow_inference(**kwargs: Any):
            mel, cache = flow_inference(**kwargs)
            call = self._current.calls[-1]
            call.mel = mel[0, :, call.token_offset * model.flow.token_mel_ratio:].detach().clone()
            return mel, cache

        def recording_hift_inference(speech_feat: torch.Tensor, cache_source: torch.Tensor = torch.zeros(1, 1, 0)):
            speech, source = hift_inference(speech_feat=speech_feat, cache_source=cache_source)
            call = self._current.calls[-1]
            call.hift_mel = speech_feat[0].detach().clone()
            call.cache_source = cache_source.detach().clone()
            call.speech = speech.detach().reshape(-1).clone()
            call.source = source.detach().clone()
            return speech, source

        # Instance attributes shadow the methods; tts() and token2wav() look them up on self.
        model.llm_job = llm_job
        model.token2wav = recording_token2wav
        model.flow.inference = recording_flow_inference
        model.hift.inference = recording_hift_inference

    @property
    def _current(self) -> ReferenceRun:
        if self._run is None:
            raise RuntimeError("no reference request in progress")
        return self._run

    def run(
        self,
        tokens: list[int],
        *,
        stream: bool,
        embedding: torch.Tensor,
        prompt_tokens: torch.Tensor | None = None,
        prompt_mel: torch.Tensor | None = None,
        speed: float = 1.0,
        seed: int | None = None,
        reset_hop: bool = True,
    ) -> ReferenceRun:
        """One `tts()` request over `tokens`; embedding (1, 192), prompt tokens (1, P),
        prompt mel (1, 2P, 80). With `seed`, the global RNG is seeded once before the request
        (what `set_all_random_seed` does before an upstream request)."""
        if reset_hop:
            self.model.token_hop_len = UPSTREAM_BASE_HOP
        self._tokens = list(tokens)
        self._run = ReferenceRun(hop_at_start=self.model.token_hop_len)
        kwargs: dict[str, Any] = {"flow_embedding": embedding, "stream": stream, "speed": speed}
        if prompt_tokens is not None:
            kwargs["flow_prompt_speech_token"] = prompt_tokens.to(torch.int32)
            kwargs["prompt_speech_feat"] = prompt_mel
        try:
            with torch.random.fork_rng(devices=[]):
                if seed is not None:
                    torch.manual_seed(seed)
                    random.seed(seed)
                    np.random.seed(seed)
                outputs = [out["tts_speech"].reshape(-1) for out in self.model.tts(**kwargs)]
            run = self._current
        finally:
            self._run = None
        if len(outputs) != len(run.calls):
            raise AssertionError(f"{len(outputs)} yields for {len(run.calls)} token2wav calls")
        return run
