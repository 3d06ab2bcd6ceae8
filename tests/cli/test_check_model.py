"""`cosyvoice check-model` as a real process: the tiny model passes with every mode ready, the
official layout (no spk2info.pt) passes without sft, and broken directories fail with one line
per problem on stderr naming the file."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.cli.fake_hub import linked_copy, replace_file
from tests.conftest import ROOT

PROG = "cosyvoice check-model"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=300, env={**os.environ},
    )


def assert_problems(result: subprocess.CompletedProcess, *problems: str) -> None:
    """Exit 1, exactly these problems on stderr (one line each), no traceback."""
    assert result.returncode == 1, result
    assert result.stderr.splitlines() == [f"{PROG}: {problem}" for problem in problems], result.stderr


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return linked_copy(tiny_model_dir, tmp_path / "model")


def test_tiny_model_passes_with_every_mode_ready(tiny_model_dir):
    result = run_cli("check-model", str(tiny_model_dir))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert "  ok       llm.pt" in out and "  ok       spk2info.pt" in out
    assert "    ok   speech_embedding.weight (6564, 64)  [speech_token_size + 3, llm_input_size]" in out
    assert "    ok   llm.model.model.layers.*: 2 blocks  [config.json num_hidden_layers]" in out
    assert "    in   feats: FLOAT (1, 128, T)" in out and "    out  output: FLOAT (B, 192)" in out
    assert "  default: x-vector only" in out
    assert "result: usable (4 of 4 modes ready: sft, zero_shot, cross_lingual, instruct2)" in out


def test_json_report_holds_the_same_findings(tiny_model_dir):
    result = run_cli("check-model", str(tiny_model_dir), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["problems"] == []
    assert {mode["name"]: mode["ready"] for mode in report["modes"]} == {
        "sft": True, "zero_shot": True, "cross_lingual": True, "instruct2": True,
    }  # fmt: skip
    checkpoints = {ckpt["file"]: ckpt for ckpt in report["checkpoints"]}
    assert set(checkpoints) == {"llm.pt", "flow.pt", "hift.pt"}
    for ckpt in checkpoints.values():
        assert ckpt["tensors"] > 0 and ckpt["dtypes"] == {"float32": ckpt["tensors"]}
        assert ckpt["shapes"] and all(check["ok"] for check in ckpt["shapes"] + ckpt["counts"])
    # lm_head is tied to embed_tokens: one tensor saved under two names, counted once.
    state = torch.load(tiny_model_dir / "llm.pt", weights_only=True)
    tied = state["llm.model.lm_head.weight"].numel()
    assert checkpoints["llm.pt"]["parameters"] == sum(t.numel() for t in state.values()) - tied
    onnx_models = {model["file"]: model for model in report["onnx_models"]}
    assert [spec["name"] for spec in onnx_models["speech_tokenizer_v2.onnx"]["inputs"]] == ["feats", "feats_length"]
    assert report["speakers"] == [{"name": "default", "kind": "x-vector only"}]


@pytest.mark.slow
def test_official_layout_without_presets_is_usable_without_sft(tmp_path):
    """make-tiny-model --no-presets writes what the official CosyVoice2-0.5B ships: no spk2info.pt."""
    model = tmp_path / "official-layout"
    assert run_cli("make-tiny-model", str(model), "--no-presets").returncode == 0
    result = run_cli("check-model", str(model))
    assert result.returncode == 0, result.stderr
    assert "  absent   spk2info.pt" in result.stdout
    assert "  none: no spk2info.pt (the official CosyVoice2-0.5B ships none)" in result.stdout
    assert ("  sft            not ready, needs preset speakers: the directory has no spk2info.pt (the official "
            "CosyVoice2-0.5B has none); register a voice with `cosyvoice speakers add") in result.stdout
    assert "result: usable (3 of 4 modes ready: zero_shot, cross_lingual, instruct2)" in result.stdout


def test_missing_onnx_model_blocks_the_frontend_and_every_mode(tiny_model_dir, tmp_path):
    model = linked_copy(tiny_model_dir, tmp_path / "model", skip=("campplus.onnx",))
    result = run_cli("check-model", str(model))
    assert_problems(result, "campplus.onnx is missing (the frontend loads it at start)")
    assert "  MISSING  campplus.onnx" in result.stdout
    assert "  frontend  CANNOT LOAD (1 problem(s))" in result.stdout
    assert "  zero_shot      not ready, needs a loadable campplus.onnx (the recording's speaker embedding)" in result.stdout
    assert "  sft            not ready, needs the frontend stage (see its problems)" in result.stdout
    assert "result: NOT usable (1 problem(s), listed on stderr)" in result.stdout


def test_truncated_checkpoint_is_named(tiny_model_dir, model_copy):
    data = (tiny_model_dir / "llm.pt").read_bytes()
    replace_file(model_copy / "llm.pt", data[: len(data) // 2])
    result = run_cli("check-model", str(model_copy))
    assert_problems(
        result, "llm.pt: cannot read it (PytorchStreamReader failed reading zip archive: failed finding central directory)"
    )
    assert "  llm       CANNOT LOAD (1 problem(s))" in result.stdout
    assert "  flow      ok" in result.stdout


def test_wrong_shape_names_the_key_and_the_config(tiny_model_dir, model_copy):
    state = torch.load(tiny_model_dir / "flow.pt", weights_only=True)
    state["spk_embed_affine_layer.weight"] = torch.zeros(80, 256)  # a 256-dim speaker embedding
    buffer = io.BytesIO()
    torch.save(state, buffer)
    replace_file(model_copy / "flow.pt", buffer.getvalue())
    result = run_cli("check-model", str(model_copy))
    assert_problems(
        result,
        "flow.pt: spk_embed_affine_layer.weight has shape (80, 256), the config needs (80, 192) "
        "(flow.output_size, spk_embed_dim)",
    )
    assert "    BAD  spk_embed_affine_layer.weight (80, 256), config needs (80, 192)" in result.stdout


def test_config_that_disagrees_with_the_checkpoint(model_copy):
    config_path = model_copy / "CosyVoice-BlankEN" / "config.json"
    config = json.loads(config_path.read_text()) | {"num_hidden_layers": 3}
    replace_file(config_path, json.dumps(config).encode())
    result = run_cli("check-model", str(model_copy))
    assert_problems(result, "llm.pt: has 2 llm.model.model.layers.* blocks, the config needs 3 (config.json num_hidden_layers)")


def test_unreadable_speaker_file_blocks_flow_and_frontend(model_copy):
    replace_file(model_copy / "spk2info.pt", b"not a torch file")
    result = run_cli("check-model", str(model_copy), "--json")
    assert_problems(result, "spk2info.pt: not a spk2info.pt file (torch.load cannot read it)")
    report = json.loads(result.stdout)
    assert {stage["name"]: stage["ok"] for stage in report["stages"]} == {
        "llm": True, "flow": False, "vocoder": True, "frontend": False,
    }  # fmt: skip


def _drop_llm_decoder(model: Path) -> None:
    state = torch.load(model / "llm.pt", weights_only=True)
    del state["llm_decoder.weight"]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    replace_file(model / "llm.pt", buffer.getvalue())


def _yaml_that_runs_code(model: Path) -> None:
    text = (model / "cosyvoice2.yaml").read_text()
    replace_file(model / "cosyvoice2.yaml", ("boom: !!python/object/apply:os.system ['true']\n" + text).encode())


@pytest.mark.parametrize(
    ("damage", "problems", "broken_stages"),
    [
        (_drop_llm_decoder, ["llm.pt: has no llm_decoder.weight (the llm needs it)"], {"llm"}),
        # The S3 tokenizer's place taken by CAM++: one input where the frontend feeds two.
        (lambda model: replace_file(model / "speech_tokenizer_v2.onnx", (model / "campplus.onnx").read_bytes()),
         ["speech_tokenizer_v2.onnx: has 1 input(s), the frontend feeds 2 ((1, 128, T) whisper log-mel, "
          "the int32 frame count)"],
         {"frontend"}),
        (lambda model: replace_file(model / "CosyVoice-BlankEN" / "config.json",
                                    json.dumps(json.loads((model / "CosyVoice-BlankEN" / "config.json").read_text())
                                               | {"vocab_size": 100}).encode()),
         ["llm.pt: llm.model.model.embed_tokens.weight has shape (576, 64), the config needs (100, 64) "
          "(config.json vocab_size, hidden_size)",
          "llm.pt: llm.model.lm_head.weight has shape (576, 64), the config needs (100, 64) "
          "(config.json vocab_size, hidden_size)",
          "CosyVoice-BlankEN: the tokenizer has 532 tokens but config.json vocab_size is 100: text token ids would "
          "fall outside the LLM's embedding"],
         {"llm", "frontend"}),
        (_yaml_that_runs_code,
         ["cosyvoice2.yaml: unsupported yaml tag '!object/apply:os.system' at line 1"],
         {"llm", "flow", "vocoder", "frontend"}),
    ],
    ids=["missing-key", "wrong-onnx-model", "vocab-too-small", "yaml-with-python-tag"],
)
def test_damaged_directory_names_each_problem(model_copy, damage, problems, broken_stages):
    damage(model_copy)
    result = run_cli("check-model", str(model_copy), "--json")
    assert_problems(result, *problems)
    report = json.loads(result.stdout)
    assert {stage["name"] for stage in report["stages"] if not stage["ok"]} == broken_stages
    assert not any(mode["ready"] for mode in report["modes"])


def test_not_a_model_directory_is_one_line(tmp_path):
    result = run_cli("check-model", str(tmp_path))
    assert_problems(result, f"model directory {tmp_path} has none of cosyvoice.yaml, cosyvoice2.yaml, cosyvoice3.yaml")
    assert result.stdout == ""
    missing = tmp_path / "nowhere"
    assert_problems(run_cli("check-model", str(missing)), f"model directory {missing} does not exist or is not a directory")
    as_json = run_cli("check-model", str(missing), "--json")
    assert_problems(as_json, f"model directory {missing} does not exist or is not a directory")
    assert json.loads(as_json.stdout) == {"model_dir": str(missing), "ok": False,
                                          "problems": [f"model directory {missing} does not exist or is not a directory"]}


@pytest.mark.parametrize("command", ["check-model", "download-model"])
def test_help_does_not_import_torch(command):
    code = (
        "import sys\nfrom services.cli.main import main\n"
        f"try:\n    main([{command!r}, '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "no torch"
    assert f"usage: cosyvoice {command}" in result.stdout
