"""Per-request streaming state for the CosyVoice2 vocoder: upstream `token2wav`'s HiFT part.

Each chunk of new mel frames is vocoded together with the last 8 frames of the previous chunk.
The first 3840 samples of its source excitation are replaced by the previous chunk's last 3840
(phase continuity), its first 3840 output samples are crossfaded with the previous chunk's
held-back tail (hamming halves), and, unless the chunk is final, its own last 3840 samples are
held back for the next chunk. The state lives in the `VocoderStream` object, one per request;
the model is shared and stateless.

Upstream (`CosyVoice2Model.__init__` in cosyvoice/cli/model.py) hard-codes the cache as
`mel_cache_len = 8` frames and `source_cache_len = 8 * 480` samples, with
`speech_window = np.hamming(2 * source_cache_len)`; the 480 is the model's samples per frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from services.vocoder.model.hift import HiFTGenerator

MEL_CACHE_FRAMES = 8  # upstream's mel_cache_len


class VocoderStreamError(ValueError):
    """A chunk the stream cannot take; the message names the argument or the state."""


@dataclass(frozen=True)
class PreparedChunk:
    """What one stream contributes to a vocoder call."""

    mel: torch.Tensor  # (1, C, cached + new frames)
    cache_source: torch.Tensor | None  # (1, 1, overlap) or None on the first chunk
    final: bool


@dataclass(frozen=True)
class _Cache:
    mel: torch.Tensor  # (1, C, MEL_CACHE_FRAMES)
    source: torch.Tensor  # (1, 1, overlap)
    speech_tail: torch.Tensor  # (overlap,), not yet emitted


class VocoderStream:
    """Turns one request's mel chunks into PCM chunks (1-D float32 tensors, 24 kHz).

    `push` does a whole chunk. A batching caller instead calls `prepare` on several streams,
    runs one `hift.inference` over the stacked mels (see `vocode_batch`), and hands each
    stream its row with `commit`.
    """

    def __init__(
        self,
        hift: HiFTGenerator,
        generator: torch.Generator | None = None,
        mel_cache_frames: int = MEL_CACHE_FRAMES,
        speed: float = 1.0,
    ) -> None:
        if mel_cache_frames <= 0:
            raise VocoderStreamError(f"mel_cache_frames must be positive, got {mel_cache_frames}")
        self.hift = hift
        self.generator = generator
        self.mel_cache_frames = mel_cache_frames
        self.speed = speed  # applied by vocode_batch to a single final chunk (non-streaming)
        self.overlap = mel_cache_frames * hift.samples_per_frame
        # float64 like upstream, whose numpy window promotes the crossfade to double.
        window = torch.from_numpy(np.hamming(2 * self.overlap))
        self._fade_in, self._fade_out = window[: self.overlap], window[self.overlap:]
        self._cache: _Cache | None = None
        self._pending: PreparedChunk | None = None
        self.finished = False
        self.samples_emitted = 0

    @property
    def has_cache(self) -> bool:
        """Whether a previous chunk left frames, source and a held-back tail for the next."""
        return self._cache is not None

    def push(self, mel: torch.Tensor, final: bool = False, speed: float = 1.0) -> torch.Tensor:
        """Vocode the next chunk of new mel frames, (C, T) or (1, C, T); returns PCM samples."""
        prepared = self.prepare(mel, final=final, speed=speed)
        speech, source = self.hift.inference(
            prepared.mel, cache_source=prepared.cache_source, generator=self.generator
        )
        return self.commit(speech, source)

    def prepare(self, mel: torch.Tensor, final: bool = False, speed: float = 1.0) -> PreparedChunk:
        """Prepend the cached frames; `speed` ≠ 1 time-stretches a whole, single-chunk request."""
        if self.finished:
            raise VocoderStreamError("the stream already vocoded its final chunk")
        if self._pending is not None:
            raise VocoderStreamError("prepare called twice without commit")
        mel = _as_batch_of_one(mel, self.hift.config.in_channels)
        if speed != 1.0:
            if speed <= 0 or not final or self._cache is not None:
                raise VocoderStreamError(
                    f"speed {speed}: only a positive speed on a single, final chunk (as upstream)"
                )
            frames = int(mel.shape[2] / speed)
            if frames < 1:
                raise VocoderStreamError(f"speed {speed} leaves no frames of {mel.shape[2]}")
            mel = F.interpolate(mel, size=frames, mode="linear")
        if self._cache is not None:
            mel = torch.cat([self._cache.mel.to(mel), mel], dim=2)
        if mel.shape[2] == 0 or (not final and mel.shape[2] < self.mel_cache_frames):
            raise VocoderStreamError(
                f"mel: a {'final' if final else 'non-final'} first chunk needs at least "
                f"{1 if final else self.mel_cache_frames} frame(s), got {mel.shape[2]}"
            )
        cache_source = None if self._cache is None else self._cache.source
        self._pending = PreparedChunk(mel, cache_source, final)
        return self._pending

    def abort(self) -> None:
        """Forget a prepared chunk whose vocoder call failed; the stream stays usable."""
        self._pending = None

    @torch.inference_mode()
    def commit(self, speech: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Take the vocoder's output for the prepared chunk: (1, N) or (N,) speech, (1, 1, N)
        source. Returns the samples that are final now."""
        pending = self._pending
        if pending is None:
            raise VocoderStreamError("commit without a prepared chunk")
        expected = pending.mel.shape[2] * self.hift.samples_per_frame
        speech = speech.reshape(-1)
        if speech.numel() != expected or source.shape[-1] != expected:
            raise VocoderStreamError(
                f"speech/source: expected {expected} samples for the prepared chunk, got "
                f"{speech.numel()} and {source.shape[-1]}"
            )
        self._pending = None
        if self._cache is not None:
            speech = self._crossfade(speech, self._cache.speech_tail)
        if pending.final:
            self._cache, self.finished = None, True
            emitted = speech
        else:
            self._cache = _Cache(
                mel=pending.mel[:, :, -self.mel_cache_frames:],
                source=source.reshape(1, 1, -1)[:, :, -self.overlap:],
                speech_tail=speech[-self.overlap:],
            )
            emitted = speech[: -self.overlap]
        self.samples_emitted += emitted.numel()
        return emitted

    def _crossfade(self, speech: torch.Tensor, previous_tail: torch.Tensor) -> torch.Tensor:
        overlap = self.overlap
        # MPS has no float64; everywhere else match upstream's double-precision blend.
        wide = torch.float32 if speech.device.type == "mps" else torch.float64
        fade_in = self._fade_in.to(device=speech.device, dtype=wide)
        fade_out = self._fade_out.to(device=speech.device, dtype=wide)
        blended = speech[:overlap].to(wide) * fade_in + previous_tail.to(wide) * fade_out
        return torch.cat([blended.to(speech.dtype), speech[overlap:]])


def _as_batch_of_one(mel: torch.Tensor, channels: int) -> torch.Tensor:
    if mel.dim() == 2:
        mel = mel.unsqueeze(0)
    if mel.dim() != 3 or mel.shape[0] != 1 or mel.shape[1] != channels:
        raise VocoderStreamError(
            f"mel must have shape ({channels}, frames) or (1, {channels}, frames), "
            f"got {tuple(mel.shape)}"
        )
    return mel


def vocode_batch(
    streams: Sequence[VocoderStream],
    mels: Sequence[torch.Tensor],
    finals: Sequence[bool],
) -> list[torch.Tensor]:
    """Push one chunk into each of several streams with as few vocoder calls as possible.

    Chunks whose prepared shapes agree (frames, and whether a source cache applies) run as one
    batch; each stream's own generator drives its row, so results equal separate `push` calls
    up to float summation order.
    """
    if not len(streams) == len(mels) == len(finals):
        raise VocoderStreamError("streams, mels and finals must have the same length")
    if not streams:
        return []
    if len({id(stream) for stream in streams}) != len(streams):
        raise VocoderStreamError("streams: each stream may appear once per batch")
    if len({id(stream.hift) for stream in streams}) > 1:
        raise VocoderStreamError("streams: a batch must share one vocoder model")
    prepared: list[PreparedChunk] = []
    try:
        for stream, mel, final in zip(streams, mels, finals):
            prepared.append(stream.prepare(mel, final=final, speed=stream.speed))
        return _run_prepared(streams, prepared)
    except Exception:
        # Only chunks prepared here; streams already committed have nothing pending.
        for stream in streams[: len(prepared)]:
            stream.abort()
        raise


def _run_prepared(
    streams: Sequence[VocoderStream], prepared: list[PreparedChunk]
) -> list[torch.Tensor]:
    hift = streams[0].hift
    outputs: list[torch.Tensor | None] = [None] * len(streams)

    def shape_key(index: int) -> tuple[int, int]:
        chunk = prepared[index]
        cached = 0 if chunk.cache_source is None else chunk.cache_source.shape[-1]
        return chunk.mel.shape[2], cached

    for _, group in groupby(sorted(range(len(streams)), key=shape_key), key=shape_key):
        indices = list(group)
        chunks = [prepared[i] for i in indices]
        caches = [c.cache_source for c in chunks]
        speech, source = hift.inference(
            torch.cat([c.mel for c in chunks]),
            cache_source=None if caches[0] is None else torch.cat(caches),
            generator=[streams[i].generator for i in indices],
        )
        for row, index in enumerate(indices):
            outputs[index] = streams[index].commit(speech[row], source[row : row + 1])
    return [output for output in outputs if output is not None]
