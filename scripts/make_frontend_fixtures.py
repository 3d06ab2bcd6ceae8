"""Write the prompt-audio frontend's golden fixtures by running the REFERENCE's own functions.

The reference is the vendored CosyVoice in PyPI `cosyvoice2-eu==0.2.8`. It needs torchaudio,
which has no build for the CPU torch the project uses, so this script runs once in a separate
environment and writes small `.npz` files that CI compares against (tests/frontend/).

What it runs, on deterministic synthetic signals it writes itself (voiced harmonic + noise +
chirp, PCM_16 WAV at 16000, 22050 (stereo), 24000, 44100 and 48000 Hz):
- `cosyvoice.utils.file_utils.load_wav(file, 16000)`, and the upstream step
  `load_wav(file, 24000)` (upstream commit 622a3a1 loads the 24 kHz prompt from the file;
  upstream's load_wav, with `min_sr` instead of 0.2.8's assert, is restated below);
- the 0.2.8 step `torchaudio.transforms.Resample(16000, 24000)` of the 16 kHz signal;
- the yaml's `feat_extractor` (matcha `mel_spectrogram`, CosyVoice2 parameters) on both;
- `whisper.log_mel_spectrogram(speech_16k, n_mels=128)` and
  `torchaudio.compliance.kaldi.fbank(speech_16k, num_mel_bins=80, dither=0, sample_frequency=16000)`;
- `CosyVoiceFrontEnd.frontend_zero_shot` (tokens, embedding, token/mel alignment) on the tiny
  model's ONNX files (`services.tinymodel.onnx_models`, seed 0, the same files the tests use),
  for the 0.2.8 path and, with the feat_extractor fed the file-loaded 24 kHz signal, upstream's.

How to run (3-5 minutes, ~7.5 GB, outside the project's venv):
    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch==2.9.1 torchvision==0.24.1
    /tmp/refenv/bin/pip install torch==2.9.1 'torchaudio==2.9.*' torchcodec==0.8.1 soundfile numpy \
        onnx onnxruntime inflect numba tqdm more-itertools tiktoken pyyaml librosa scipy
    /tmp/refenv/bin/pip install --no-deps openai-whisper==20250625 cosyvoice2-eu==0.2.8
    # torchaudio 2.9's load() always decodes through torchcodec, which needs FFmpeg's
    # shared libraries (Debian 12: FFmpeg 5.1); torchcodec 0.17 does not load with torch 2.9.1.
    apt-get install --no-install-recommends libavformat59 libavcodec59 libavutil57 \
        libswresample4 libavdevice59 libavfilter8 libswscale6
    /tmp/refenv/bin/python scripts/make_frontend_fixtures.py   # from the repo root
The output is deterministic: rerunning it rewrites identical arrays.
The reference's unused heavy imports (matcha.utils' training helpers, WeTextProcessing's `tn`)
are replaced by empty modules here, as tests/reference does.
"""

from __future__ import annotations

import importlib.machinery
import io
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "frontend" / "fixtures"

# (name, sample rate, seconds, channels). Lengths are chosen so the 24 kHz mel frame count is
# odd for some signals (the alignment then drops a frame) and so the rates cover every
# resampling ratio the tests check.
SIGNALS = (
    ("sr16000", 16000, 1.03, 1),
    ("sr22050_stereo", 22050, 1.0, 2),
    ("sr24000", 24000, 1.03, 1),
    ("sr44100", 44100, 1.0, 1),
    ("sr48000", 48000, 1.0, 1),
)
HEAD_SECONDS = 0.1  # resampled-waveform excerpts stored per file
TAIL_SECONDS = 0.05
# The mel ranges of the CosyVoice2 yaml's feat_extractor.
FEAT = dict(n_fft=1920, num_mels=80, sampling_rate=24000, hop_size=480, win_size=1920, fmin=0, fmax=8000, center=False)


def synth(sample_rate: int, seconds: float, channels: int, seed: int) -> np.ndarray:
    """Voiced harmonic (vibrato f0, harmonics to Nyquist), low noise and a full-band chirp:
    energy in the 6-12 kHz band is what separates the resamplers and the 24 kHz paths."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    f0 = 140.0 + 30.0 * np.sin(2 * np.pi * 3.0 * t) + 40.0 * seed / len(SIGNALS)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = np.zeros(n)
    k = 1
    while k * f0.max() < sample_rate / 2:
        voiced += np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k
        k += 1
    chirp_top = 0.45 * sample_rate
    chirp = np.sin(2 * np.pi * (50.0 * t + (chirp_top - 50.0) * t**2 / (2 * seconds)))
    envelope = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.05)  # 50 ms fades
    out = []
    for c in range(channels):
        noise = rng.standard_normal(n)
        mix = 0.25 * voiced + 0.05 * chirp * (1 + c) + 0.01 * noise
        out.append(0.8 * envelope * mix / np.max(np.abs(mix)))
    return np.stack(out, axis=1)


def _stub(name: str, **attrs: object) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__path__ = []  # type: ignore[attr-defined]
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def import_reference() -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """(file_utils, matcha audio, cli.frontend) with only unused imports stubbed."""
    import matcha

    utils = _stub("matcha.utils")  # its __init__ pulls hydra/lightning for training
    utils.__path__ = [os.path.join(os.path.dirname(matcha.__file__), "utils")]  # type: ignore[attr-defined]
    for name in ("tn", "tn.chinese", "tn.english"):
        _stub(name)
    _stub("tn.chinese.normalizer", Normalizer=object)  # text normalisation only
    _stub("tn.english.normalizer", Normalizer=object)
    import cosyvoice.cli.frontend as frontend
    import cosyvoice.utils.file_utils as file_utils
    import matcha.utils.audio as matcha_audio

    return file_utils, matcha_audio, frontend


def upstream_load_wav(path: str, target_sr: int, min_sr: int = 16000):
    """Upstream's `load_wav` (HEAD of FunAudioLLM/CosyVoice): 0.2.8's asserts `sr > target_sr`,
    which refuses a 16 kHz file at 24 kHz; upstream checks `sr >= min_sr` instead. Otherwise the
    same torchaudio calls: load, channel mean, default Resample."""
    import torchaudio

    speech, sample_rate = torchaudio.load(path, backend="soundfile")
    speech = speech.mean(dim=0, keepdim=True)
    if sample_rate != target_sr:
        assert sample_rate >= min_sr, f"wav sample rate {sample_rate} is below {min_sr}"
        speech = torchaudio.transforms.Resample(orig_freq=sample_rate, new_freq=target_sr)(speech)
    return speech


def reference_frontend(frontend: types.ModuleType, onnx_dir: Path, feat_extractor) -> object:
    """A CosyVoiceFrontEnd with the reference's sessions and options, minus the text tokenizer."""
    import onnxruntime
    import torch

    fe = frontend.CosyVoiceFrontEnd.__new__(frontend.CosyVoiceFrontEnd)
    option = onnxruntime.SessionOptions()
    option.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    option.intra_op_num_threads = 1
    cpu = ["CPUExecutionProvider"]
    fe.campplus_session = onnxruntime.InferenceSession(str(onnx_dir / "campplus.onnx"), sess_options=option, providers=cpu)
    fe.speech_tokenizer_session = onnxruntime.InferenceSession(
        str(onnx_dir / "speech_tokenizer_v2.onnx"), sess_options=option, providers=cpu
    )
    fe.device = torch.device("cpu")
    fe.feat_extractor = feat_extractor
    one = torch.zeros(1, 1, dtype=torch.int32)
    fe._extract_text_token = lambda text: (one, torch.tensor([1], dtype=torch.int32))  # text is not ours
    return fe


def main() -> None:
    import torch
    import torchaudio
    import whisper
    from functools import partial

    torch.set_num_threads(1)
    file_utils, matcha_audio, frontend = import_reference()
    kaldi = frontend.kaldi
    feat_extractor = partial(matcha_audio.mel_spectrogram, **FEAT)
    sys.path.insert(0, str(ROOT))
    from services.tinymodel.onnx_models import write_onnx_models

    OUT.mkdir(parents=True, exist_ok=True)
    total = 0
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = Path(tmp)
        write_onnx_models(onnx_dir, 0, "speech_tokenizer_v2.onnx")
        for seed, (name, rate, seconds, channels) in enumerate(SIGNALS):
            buffer = io.BytesIO()
            soundfile.write(buffer, synth(rate, seconds, channels, seed), rate, format="WAV", subtype="PCM_16")
            wav = buffer.getvalue()
            path = onnx_dir / f"{name}.wav"
            path.write_bytes(wav)

            speech_16k = file_utils.load_wav(str(path), 16000)  # (1, N16)
            speech_24k_file = upstream_load_wav(str(path), 24000)  # upstream
            if rate > 24000:  # where 0.2.8's load_wav accepts the file, it must agree
                assert torch.equal(speech_24k_file, file_utils.load_wav(str(path), 24000))
            speech_24k_16k = torchaudio.transforms.Resample(orig_freq=16000, new_freq=24000)(speech_16k)  # 0.2.8
            mel_file = feat_extractor(speech_24k_file).squeeze(0).transpose(0, 1)
            mel_16k = feat_extractor(speech_24k_16k).squeeze(0).transpose(0, 1)
            whisper_mel = whisper.log_mel_spectrogram(speech_16k, n_mels=128).squeeze(0)
            fbank = kaldi.fbank(speech_16k, num_mel_bins=80, dither=0, sample_frequency=16000)

            results = {}
            for path_name, extractor in (
                ("0.2.8", feat_extractor),
                # upstream's _extract_speech_feat loads the file at 24 kHz itself
                ("upstream", lambda _speech, s=speech_24k_file: feat_extractor(s)),
            ):
                fe = reference_frontend(frontend, onnx_dir, extractor)
                results[path_name] = fe.frontend_zero_shot("x", "x", speech_16k, 24000, "")
            tokens_full, _ = frontend.CosyVoiceFrontEnd._extract_speech_token(fe, speech_16k)

            def f32(t: torch.Tensor) -> np.ndarray:
                return t.detach().cpu().numpy().astype(np.float32)

            arrays = {
                "wav": np.frombuffer(wav, dtype=np.uint8),
                "sample_rate": np.int32(rate),
                "mel_file": f32(mel_file),
                "mel_16k": f32(mel_16k),
                "whisper": f32(whisper_mel),
                "fbank": f32(fbank),
                "tokens_full": tokens_full.numpy().reshape(-1).astype(np.int32),
            }
            # Size: whole waveforms would pass 1.5 MB, so the files carry the weight. The 16 kHz
            # file's 16 kHz signal is the file itself: whisper log-mel, fbank and tokens are
            # checked on it from the reference's own waveform. The 24 kHz file's 24 kHz signal
            # is the file: the prompt mel is checked on it likewise. Resampled signals are
            # stored as a head and a tail excerpt (both edges plus steady state) to check the
            # resampler; their mels are checked chained through our resampler.
            for key, wave, rate_out in (("speech_16k", speech_16k, 16000), ("speech_24k", speech_24k_file, 24000)):
                if rate != rate_out:
                    arrays[f"{key}_head"] = f32(wave[0, : int(HEAD_SECONDS * rate_out)])
                    arrays[f"{key}_tail"] = f32(wave[0, -int(TAIL_SECONDS * rate_out) :])
            if rate == 16000:
                assert torch.equal(mel_file, mel_16k)  # one path for a 16 kHz file
                del arrays["mel_16k"]
            else:
                for key in ("whisper", "fbank", "tokens_full"):
                    del arrays[key]
            for path_name, mi in results.items():
                key = "upstream" if path_name == "upstream" else "v028"
                arrays[f"{key}_tokens"] = mi["flow_prompt_speech_token"].numpy().reshape(-1).astype(np.int32)
                arrays[f"{key}_mel_len"] = np.int32(mi["prompt_speech_feat"].shape[1])
                arrays[f"{key}_embedding"] = f32(mi["flow_embedding"].reshape(-1))
                full = mel_file if key == "upstream" else mel_16k
                assert torch.equal(mi["prompt_speech_feat"][0], full[: mi["prompt_speech_feat"].shape[1]])
            target = OUT / f"{name}.npz"
            np.savez_compressed(target, **arrays)
            size = target.stat().st_size
            total += size
            print(f"{target.relative_to(ROOT)}: {size / 1024:.0f} KiB, tokens {len(arrays['upstream_tokens'])}, "
                  f"mel {mel_file.shape[0]} -> {int(arrays['upstream_mel_len'])}")
    print(f"total {total / 1024:.0f} KiB; torch {torch.__version__}, torchaudio {torchaudio.__version__}")


if __name__ == "__main__":
    main()
