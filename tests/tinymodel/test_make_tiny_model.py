"""`cosyvoice make-tiny-model`: a random-weight CosyVoice2 directory in the official layout
that loads through the same code paths as a real one (ours, the reference's, transformers',
onnxruntime's)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.modeldir.layout import ModelDir
from services.common.modeldir.tokenizer import COSYVOICE2_SPECIAL_TOKENS, CosyVoiceTokenizer
from services.flow.model.loader import load_flow
from services.flow.speakers import SpeakerTable
from services.llm.model.loader import load_llm
from services.tinymodel.writer import write_tiny_model
from services.vocoder.model.loader import load_hift

ROOT = Path(__file__).resolve().parents[2]
QWEN_FILES = ["vocab.json", "merges.txt", "tokenizer_config.json", "config.json", "generation_config.json",
              "model.safetensors"]  # fmt: skip
OFFICIAL_FILES = [
    "cosyvoice2.yaml", "llm.pt", "flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v2.onnx", "spk2info.pt",
    *(f"CosyVoice-BlankEN/{name}" for name in QWEN_FILES),
]  # fmt: skip
EXTRA_FILES = ["prompt_sample.wav", "prompt_sample.txt"]  # a voice to try zero-shot with
CHECKPOINTS = ["llm.pt", "flow.pt", "hift.pt", "spk2info.pt"]
BINARY_FILES = ["campplus.onnx", "speech_tokenizer_v2.onnx", "CosyVoice-BlankEN/model.safetensors"]
TEXT_FILES = ["cosyvoice2.yaml", *(f"CosyVoice-BlankEN/{n}" for n in QWEN_FILES if n != "model.safetensors")]


def read(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def flat_tensors(value: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a (nested) checkpoint dict, by dotted key."""
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    assert isinstance(value, dict), f"{prefix}: unexpected {type(value).__name__}"
    tensors: dict[str, torch.Tensor] = {}
    for key, item in value.items():
        tensors.update(flat_tensors(item, f"{prefix}.{key}" if prefix else str(key)))
    return tensors


def checkpoint_tensors(root: Path) -> dict[str, torch.Tensor]:
    return {f"{name}:{key}": t for name in CHECKPOINTS for key, t in flat_tensors(read(root / name)).items()}


def test_every_official_file_exists(tiny_model_dir: Path):
    for name in OFFICIAL_FILES:
        path = tiny_model_dir / name
        assert path.is_file() and path.stat().st_size > 0, name
    model_dir = ModelDir.open(tiny_model_dir)
    assert model_dir.generation.name == "cosyvoice2"
    assert model_dir.speech_tokenizer_path.name == "speech_tokenizer_v2.onnx"
    # Same stage classes as CosyVoice2-0.5B (what the reference's get_model_type checks).
    assert [model_dir.stage_config(s).class_name for s in ("llm", "flow", "hift")] == [
        "Qwen2LM", "CausalMaskedDiffWithXvec", "HiFTGenerator"
    ]  # fmt: skip


def test_loads_strictly_through_our_loaders(tiny_model_dir: Path):
    """The loaders a real directory goes through; strict loads, and the weights are the file's."""
    model_dir = ModelDir.open(tiny_model_dir)
    flow = load_flow(model_dir)
    assert flow.state_dict().keys() == read(tiny_model_dir / "flow.pt").keys()
    for key, value in read(tiny_model_dir / "flow.pt").items():
        assert torch.equal(flow.state_dict()[key], value), key
    llm = load_llm(model_dir)
    llm_state = read(tiny_model_dir / "llm.pt")
    assert llm.state_dict().keys() == llm_state.keys()
    for key, value in llm_state.items():
        assert torch.equal(llm.state_dict()[key], value), key
    hift = load_hift(model_dir)
    assert hift.sample_rate == 24000
    speakers = SpeakerTable.load(model_dir.spk2info_path)
    assert list(speakers.embeddings) == ["default"]
    tokenizer = CosyVoiceTokenizer.from_dir(model_dir.tokenizer_dir)
    assert tokenizer.endofprompt_id == tokenizer.token_id("<|endoftext|>") + 3
    assert llm.state_dict()["llm.model.model.embed_tokens.weight"].shape[0] >= len(tokenizer)


def test_reference_modules_load_strictly(tiny_model_dir: Path):
    from tests.reference.cosyvoice2 import load_reference_flow, load_reference_hift, load_reference_llm

    model_dir = ModelDir.open(tiny_model_dir)
    # Each helper calls load_state_dict(strict=True) on the reference class built from the yaml.
    llm, flow, hift = load_reference_llm(model_dir), load_reference_flow(model_dir), load_reference_hift(model_dir)
    assert type(llm).__name__ == "Qwen2LM"
    assert type(flow).__name__ == "CausalMaskedDiffWithXvec"
    assert type(hift).__name__ == "HiFTGenerator"
    assert llm.state_dict().keys() == read(tiny_model_dir / "llm.pt").keys()
    assert flow.state_dict().keys() == read(tiny_model_dir / "flow.pt").keys()
    assert hift.state_dict().keys() == read(tiny_model_dir / "hift.pt").keys()


def test_transformers_loads_the_qwen_directory_offline(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    qwen_dir = tiny_model_dir / "CosyVoice-BlankEN"
    tokenizer = transformers.AutoTokenizer.from_pretrained(qwen_dir, local_files_only=True)
    # What the reference's CosyVoice2Tokenizer adds on top.
    tokenizer.add_special_tokens({
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "additional_special_tokens": list(COSYVOICE2_SPECIAL_TOKENS),
    })  # fmt: skip
    ours = CosyVoiceTokenizer.from_dir(qwen_dir)
    assert len(tokenizer) == len(ours)
    for text in ("Hello world, 你好。", "<|endofprompt|>say it [laughter] twice"):
        assert tokenizer([text])["input_ids"][0] == ours.encode(text)

    model, info = transformers.Qwen2ForCausalLM.from_pretrained(
        qwen_dir, local_files_only=True, output_loading_info=True
    )
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    assert model.config.tie_word_embeddings
    # llm.pt's backbone is the same model (the reference loads the directory, then llm.pt).
    llm_state = read(tiny_model_dir / "llm.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, llm_state[f"llm.model.{key}"]), key


def ort_session(path: Path):
    """Created like the reference frontend: CPU provider, all graph optimisations, one thread."""
    onnxruntime = pytest.importorskip("onnxruntime")
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("frames", [1, 37, 300])
def test_campplus_onnx_has_the_official_call_convention(tiny_model_dir: Path, frames: int):
    session = ort_session(tiny_model_dir / "campplus.onnx")
    fbank = np.random.default_rng(frames).standard_normal((1, frames, 80)).astype(np.float32)
    # The reference feeds input 0 by position: get_inputs()[0].name.
    (embedding,) = session.run(None, {session.get_inputs()[0].name: fbank})
    assert embedding.shape == (1, 192) and embedding.dtype == np.float32
    assert np.isfinite(embedding).all() and embedding.std() > 0


@pytest.mark.parametrize("frames", [4, 100, 400, 3000])
def test_speech_tokenizer_onnx_has_the_official_call_convention(tiny_model_dir: Path, frames: int):
    session = ort_session(tiny_model_dir / "speech_tokenizer_v2.onnx")
    log_mel = np.random.default_rng(frames).uniform(-1.0, 1.5, (1, 128, frames)).astype(np.float32)
    inputs = session.get_inputs()
    outputs = session.run(None, {inputs[0].name: log_mel, inputs[1].name: np.array([frames], dtype=np.int32)})
    tokens = outputs[0].flatten()  # the reference flattens output 0 into a token list
    assert np.issubdtype(tokens.dtype, np.integer)
    assert tokens.size == frames // 4  # 100 Hz whisper frames → 25 Hz tokens
    assert ((tokens >= 0) & (tokens < 6561)).all()
    if frames >= 100:
        assert len(set(tokens.tolist())) > 1


def test_spk2info_has_one_default_speaker(tiny_model_dir: Path):
    info = read(tiny_model_dir / "spk2info.pt")
    assert list(info) == ["default"]
    embedding = info["default"]["embedding"]
    assert embedding.shape == (1, 192) and embedding.dtype == torch.float32
    assert torch.isfinite(embedding).all()


def test_same_seed_same_model_other_seed_other_weights(tiny_model_dir: Path, tmp_path: Path):
    rng_before = torch.random.get_rng_state()
    again = write_tiny_model(tmp_path / "seed0", seed=0)
    other = write_tiny_model(tmp_path / "seed1", seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global RNG is left alone

    reference = checkpoint_tensors(tiny_model_dir)
    same, different = checkpoint_tensors(again), checkpoint_tensors(other)
    assert reference.keys() == same.keys() == different.keys()
    for key, tensor in reference.items():
        assert torch.equal(tensor, same[key]), key
    # Every checkpoint has changed, and most tensors in each (not just one).
    for name in CHECKPOINTS:
        keys = [key for key in reference if key.startswith(f"{name}:")]
        changed = sum(not torch.equal(reference[key], different[key]) for key in keys)
        assert changed >= 0.5 * len(keys), f"{name}: {changed} of {len(keys)} tensors differ"
    for name in BINARY_FILES:
        assert (tiny_model_dir / name).read_bytes() == (again / name).read_bytes(), name
        assert (tiny_model_dir / name).read_bytes() != (other / name).read_bytes(), name
    for name in TEXT_FILES:  # configs and tokenizer do not depend on the seed
        assert (tiny_model_dir / name).read_text() == (other / name).read_text(), name


def test_cli_writes_a_loadable_model(tiny_model_dir: Path, tmp_path: Path):
    out = tmp_path / "cli-model"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "make-tiny-model", str(out), "--seed", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    for name in OFFICIAL_FILES:
        assert (out / name).is_file(), name
    expected, written = checkpoint_tensors(tiny_model_dir), checkpoint_tensors(out)
    assert expected.keys() == written.keys()
    assert all(torch.equal(expected[key], written[key]) for key in expected)
    load_hift(ModelDir.open(out))  # loads like any other directory


def test_a_sample_prompt_recording_and_its_transcript_are_written(tiny_model_dir: Path):
    import soundfile

    for name in EXTRA_FILES:
        assert (tiny_model_dir / name).is_file(), name
    samples, rate = soundfile.read(tiny_model_dir / "prompt_sample.wav", dtype="float32")
    assert rate == 24000 and samples.ndim == 1
    assert 2.0 <= samples.size / rate <= 30.0  # inside the frontend's prompt limits
    assert 0.1 < np.abs(samples).max() <= 1.0  # audible, not clipped
    assert (tiny_model_dir / "prompt_sample.txt").read_text().strip()


def test_no_presets_writes_the_official_layout_without_spk2info(tmp_path: Path):
    root = write_tiny_model(tmp_path / "no-presets", presets=False)
    assert not (root / "spk2info.pt").exists()
    assert ModelDir.open(root).spk2info_path is None
