"""The two ONNX models of the prompt frontend: the S3 speech tokenizer and the CAM++ speaker encoder.

The reference calls both by input *position* (`session.get_inputs()[i].name`), never by a
literal name, and the official exports' names are not something we control; so do we. An
onnxruntime session's `run` is thread-safe, so one instance serves a whole thread pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime

from services.common.modeldir.layout import SPEAKER_MODEL, ModelDir, ModelDirError

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


def session_options(num_threads: int) -> onnxruntime.SessionOptions:
    """The reference's options (full graph optimisation, `num_threads` intra-op threads).

    Inter-op parallelism stays at 1: both graphs are sequential, and the caller's thread pool
    is where concurrency comes from.
    """
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    return options


class _OnnxModel:
    """An onnxruntime session plus its input names in position order."""

    expected_inputs: int = 1

    def __init__(
        self, path: str | Path, *, providers: Sequence[str] | None = None, num_threads: int = 1
    ) -> None:
        self.path = Path(path)
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path),
                sess_options=session_options(num_threads),
                providers=list(providers or DEFAULT_PROVIDERS),
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ModelDirError(f"cannot load {self.path}: {exc}") from exc
        self.input_names: tuple[str, ...] = tuple(arg.name for arg in self.session.get_inputs())
        if len(self.input_names) < self.expected_inputs:
            raise ModelDirError(
                f"{self.path.name}: expected {self.expected_inputs} inputs, the model has {len(self.input_names)}"
            )

    def _run(self, *inputs: np.ndarray) -> np.ndarray:
        feed = dict(zip(self.input_names, inputs))
        return self.session.run(None, feed)[0]


class SpeechTokenizer(_OnnxModel):
    """`speech_tokenizer_v2.onnx`: whisper log-mel (1, 128, T) and int32 [T] → int32 tokens [N]."""

    expected_inputs = 2

    @classmethod
    def from_model_dir(
        cls, model_dir: ModelDir, *, providers: Sequence[str] | None = None, num_threads: int = 1
    ) -> "SpeechTokenizer":
        return cls(model_dir.speech_tokenizer_path, providers=providers, num_threads=num_threads)

    def __call__(self, log_mel: np.ndarray) -> np.ndarray:
        """`log_mel`: float32 [128, T] from `whisper_log_mel` of one utterance."""
        if log_mel.ndim != 2:
            raise ValueError(f"expected [n_mels, T] features, got shape {log_mel.shape}")
        feats = np.ascontiguousarray(log_mel, dtype=np.float32)[None]
        length = np.array([feats.shape[2]], dtype=np.int32)
        return np.asarray(self._run(feats, length)).reshape(-1).astype(np.int32)


class SpeakerEncoder(_OnnxModel):
    """`campplus.onnx`: mean-subtracted Kaldi fbank (1, T, 80) → float32 embedding [192]."""

    @classmethod
    def from_model_dir(
        cls, model_dir: ModelDir, *, providers: Sequence[str] | None = None, num_threads: int = 1
    ) -> "SpeakerEncoder":
        return cls(model_dir.require(SPEAKER_MODEL), providers=providers, num_threads=num_threads)

    def __call__(self, fbank: np.ndarray) -> np.ndarray:
        """`fbank`: float32 [T, 80] from `kaldi_fbank(..., subtract_mean=True)`."""
        if fbank.ndim != 2:
            raise ValueError(f"expected [T, n_bins] features, got shape {fbank.shape}")
        feats = np.ascontiguousarray(fbank, dtype=np.float32)[None]
        return np.asarray(self._run(feats)).reshape(-1).astype(np.float32)
