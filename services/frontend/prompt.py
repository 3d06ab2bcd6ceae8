"""A prompt recording → what CosyVoice 2 conditions on: speech tokens, prompt mel, speaker embedding.

This is the reference's `frontend_zero_shot` audio half (upstream FunAudioLLM/CosyVoice):
- 16 kHz signal → whisper log-mel → speech tokenizer → tokens;
- 16 kHz signal → Kaldi fbank minus its mean → CAM++ → embedding;
- 24 kHz signal → Matcha mel → prompt mel;
- for a 24 kHz model, tokens and mel are cut so the mel has exactly 2 frames per token.

The 24 kHz signal: upstream (since commit 622a3a1, 2025-12-08) resamples it from the original
file, which we follow by default (`prompt_24k_source="file"`); the 0.2.8 release resampled it
from the 16 kHz signal (`"16k"`), which loses everything above 8 kHz and changes the prompt mel
by 1.1–1.6 nats for 22.05–48 kHz files. For 16 kHz files the two are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidRequest
from services.common.modeldir.layout import ModelDir, ModelDirError
from services.frontend.audio import MAX_PROMPT_SECONDS, TOKENIZER_RATE, DecodedAudio, check_prompt_audio
from services.frontend.features import MelConfig, kaldi_fbank, prompt_mel, whisper_log_mel
from services.frontend.onnx_models import SpeakerEncoder, SpeechTokenizer
from services.frontend.resample import resample

PROMPT_24K_SOURCES = ("file", "16k")

# The reference aligns tokens and mel only for a 24 kHz model ("cosyvoice2, force
# speech_feat % speech_token = 2"): 24000 / 480 = 50 mel frames per second, tokens at 25 Hz.
ALIGNED_RATE = 24000
MEL_FRAMES_PER_TOKEN = 2


@dataclass(frozen=True)
class PromptFeatures:
    speech_tokens: np.ndarray  # int32 [N]
    prompt_mel: np.ndarray  # float32 [2N, 80]
    embedding: np.ndarray  # float32 [192]


def align_prompt(tokens: np.ndarray, mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut both to token_len = min(T // 2, N) tokens and 2 * token_len mel frames.

    The tokenizer's count (about len/640 at 16 kHz) and the mel's (len/480 at 24 kHz) come from
    different framings and disagree by a frame or two; the flow needs exactly 2 frames a token.
    """
    token_len = min(mel.shape[0] // MEL_FRAMES_PER_TOKEN, tokens.shape[0])
    return tokens[:token_len], mel[: MEL_FRAMES_PER_TOKEN * token_len]


class PromptEncoder:
    """Encodes prompt recordings. Holds only immutable state: `encode` may run concurrently."""

    def __init__(
        self,
        tokenizer: SpeechTokenizer,
        speaker: SpeakerEncoder,
        mel_config: MelConfig,
        *,
        sample_rate: int,
        prompt_24k_source: str = "file",
    ) -> None:
        if prompt_24k_source not in PROMPT_24K_SOURCES:
            raise ValueError(f"prompt_24k_source must be one of {PROMPT_24K_SOURCES}, got {prompt_24k_source!r}")
        if mel_config.sampling_rate != sample_rate:
            raise ModelDirError(
                f"feat_extractor sampling_rate {mel_config.sampling_rate} differs from sample_rate {sample_rate}"
            )
        self.tokenizer = tokenizer
        self.speaker = speaker
        self.mel_config = mel_config
        self.sample_rate = sample_rate
        self.prompt_24k_source = prompt_24k_source

    @classmethod
    def from_model_dir(
        cls,
        model_dir: ModelDir,
        *,
        providers: list[str] | None = None,
        num_threads: int = 1,
        prompt_24k_source: str = "file",
    ) -> "PromptEncoder":
        providers_seq: Sequence[str] | None = providers
        return cls(
            SpeechTokenizer.from_model_dir(model_dir, providers=providers_seq, num_threads=num_threads),
            SpeakerEncoder.from_model_dir(model_dir, providers=providers_seq, num_threads=num_threads),
            MelConfig.from_model_dir(model_dir),
            sample_rate=model_dir.sample_rate,
            prompt_24k_source=prompt_24k_source,
        )

    def mel_signal(self, audio: DecodedAudio, speech_16k: np.ndarray) -> np.ndarray:
        """The signal at the model's rate that the prompt mel is computed from."""
        if self.prompt_24k_source == "file":
            return resample(audio.samples, audio.sample_rate, self.sample_rate)
        return resample(speech_16k, TOKENIZER_RATE, self.sample_rate)

    def encode(
        self, audio: DecodedAudio, field: str = "prompt_audio", max_seconds: float = MAX_PROMPT_SECONDS
    ) -> PromptFeatures:
        check_prompt_audio(audio, field, max_seconds)
        speech_16k = resample(audio.samples, audio.sample_rate, TOKENIZER_RATE)
        mel = prompt_mel(self.mel_signal(audio, speech_16k), self.mel_config)
        tokens = self.tokenizer(whisper_log_mel(speech_16k))
        embedding = self.speaker(kaldi_fbank(speech_16k, subtract_mean=True))
        if self.sample_rate == ALIGNED_RATE:
            tokens, mel = align_prompt(tokens, mel)
        if tokens.size == 0:
            # check_prompt_audio's minimum length should prevent this; a tokenizer that
            # still gives nothing leaves the LLM without a prompt.
            raise InvalidRequest(f"{field}: the recording is too short to give a speech token")
        return PromptFeatures(
            speech_tokens=np.ascontiguousarray(tokens, dtype=np.int32),
            prompt_mel=np.ascontiguousarray(mel, dtype=np.float32),
            embedding=np.ascontiguousarray(embedding, dtype=np.float32),
        )
