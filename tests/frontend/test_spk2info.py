"""spk2info.pt import/export: both schemas round trip, reference-built files load, bad files fail cleanly."""

from __future__ import annotations

import io
import pickle
import re

import numpy as np
import pytest
import torch

from services.common.speakers import SpeakerRecord
from services.frontend.spk2info import read_spk2info, write_spk2info


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode(ids: list[int]) -> str:
    return bytes(ids).decode("utf-8")


def voice(name: str, seed: int, text: str, num_tokens: int = 5) -> SpeakerRecord:
    rng = np.random.default_rng(seed)
    return SpeakerRecord(
        name=name,
        prompt_text=text,
        speech_tokens=rng.integers(0, 6561, num_tokens, dtype=np.int32),
        prompt_mel=rng.standard_normal((2 * num_tokens, 80), dtype=np.float32),
        embedding=rng.standard_normal(192, dtype=np.float32),
    )


def preset(name: str, seed: int = 9) -> SpeakerRecord:
    embedding = np.random.default_rng(seed).standard_normal(192, dtype=np.float32)
    return SpeakerRecord(name, "", np.zeros(0, np.int32), np.zeros((0, 80), np.float32), embedding, preset=True)


RECORDS = [
    voice("alice", 1, "Hello there, this is my voice."),
    voice("中文女", 2, "希望你以后能够做的比我还好呦。"),
    voice("v3", 3, "You are a helpful assistant.<|endofprompt|>Hi.", num_tokens=1),
    voice("cross-lingual only", 4, ""),
    preset("sft preset"),
]


def as_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def reference_entry(text_ids: list[int], num_tokens: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """The dict `add_zero_shot_spk` caches, built the way `frontend_zero_shot` builds it."""
    gen = torch.Generator().manual_seed(seed)
    prompt_text = torch.tensor([text_ids], dtype=torch.int32)  # _extract_text_token
    prompt_text_len = torch.tensor([prompt_text.shape[1]], dtype=torch.int32)
    speech_token = torch.randint(0, 6561, (1, num_tokens), generator=gen).to(torch.int32)
    speech_token_len = torch.tensor([speech_token.shape[1]], dtype=torch.int32)
    speech_feat = torch.randn(1, 2 * num_tokens, 80, generator=gen)  # (1, T, 80) float32
    speech_feat_len = torch.tensor([speech_feat.shape[1]], dtype=torch.int32)
    embedding = torch.tensor([torch.randn(192, generator=gen).tolist()])  # (1, 192), default dtype
    return {"prompt_text": prompt_text, "prompt_text_len": prompt_text_len,
            "llm_prompt_speech_token": speech_token, "llm_prompt_speech_token_len": speech_token_len,
            "flow_prompt_speech_token": speech_token, "flow_prompt_speech_token_len": speech_token_len,
            "prompt_speech_feat": speech_feat, "prompt_speech_feat_len": speech_feat_len,
            "llm_embedding": embedding, "flow_embedding": embedding}  # fmt: skip


def async_entry(text: str, num_tokens: int = 4, seed: int = 0) -> dict[str, object]:
    """async_cosyvoice's cached speaker, the entry Triton reads as spk2info["001"]."""
    gen = torch.Generator().manual_seed(seed)
    return {"prompt_text": text,
            "speech_token": torch.randint(0, 6561, (1, num_tokens), generator=gen).to(torch.int32),
            "speech_feat": torch.randn(1, 2 * num_tokens, 80, generator=gen),
            "embedding": torch.randn(1, 192, generator=gen)}  # fmt: skip


@pytest.mark.parametrize("schema", ["official", "async"])
def test_round_trip(schema, tmp_path):
    data = write_spk2info(RECORDS, schema, encode)
    path = tmp_path / "spk2info.pt"
    path.write_bytes(data)
    for source in (data, path):
        loaded = read_spk2info(source, decode)
        assert [r.name for r in loaded] == [r.name for r in RECORDS]
        for got, want in zip(loaded, RECORDS):
            assert got.same_voice(want), want.name


def test_official_output_has_the_reference_layout():
    written = torch.load(io.BytesIO(write_spk2info(RECORDS, "official", encode)), weights_only=True)
    text = RECORDS[0].prompt_text
    model_input = reference_entry(encode(text), num_tokens=5)
    assert set(written["alice"]) == set(model_input)
    for key, tensor in model_input.items():
        assert written["alice"][key].dtype == tensor.dtype, key
        assert written["alice"][key].shape == tensor.shape, key
    assert written["sft preset"].keys() == {"embedding"}  # what inference_sft reads
    assert written["sft preset"]["embedding"].shape == (1, 192)


def test_official_output_fits_the_reference_model_inputs():
    """`inference_zero_shot(zero_shot_spk_id=...)` hands the cached dict (plus text) to
    `CosyVoice2Model.tts(**model_input)`: every entry must match that signature's tensors."""
    import inspect

    from tests.reference import ref

    tts = inspect.signature(ref("cosyvoice.cli.model").CosyVoice2Model.tts)
    written = torch.load(io.BytesIO(write_spk2info(RECORDS[:1], "official", encode)), weights_only=True)
    model_input = {**written["alice"], "text": torch.tensor([encode("more")], dtype=torch.int32)}
    tts.bind(None, **model_input)
    for name, parameter in tts.parameters.items():
        if isinstance(parameter.default, torch.Tensor) and name in model_input:
            assert model_input[name].dtype == parameter.default.dtype, name
            assert model_input[name].dim() == parameter.default.dim(), name
    needed = {"prompt_text", "llm_prompt_speech_token", "flow_prompt_speech_token",
              "prompt_speech_feat", "llm_embedding", "flow_embedding"}  # fmt: skip
    assert needed <= model_input.keys()


def test_reference_built_dict_loads():
    entry = reference_entry(encode("Hi, it's me."), num_tokens=4, seed=1)
    (record,) = read_spk2info(as_bytes({"me": entry}), decode)
    assert record.name == "me" and record.prompt_text == "Hi, it's me." and record.preset is False
    assert record.speech_tokens.dtype == np.int32
    np.testing.assert_array_equal(record.speech_tokens, entry["flow_prompt_speech_token"][0].numpy())
    np.testing.assert_array_equal(record.prompt_mel, entry["prompt_speech_feat"][0].numpy())
    np.testing.assert_array_equal(record.embedding, entry["flow_embedding"][0].numpy())


def test_other_dtypes_are_converted():
    entry = reference_entry(encode("x"), num_tokens=3)
    entry["llm_prompt_speech_token"] = entry["flow_prompt_speech_token"] = entry["llm_prompt_speech_token"].long()
    entry["prompt_speech_feat"] = entry["prompt_speech_feat"].half()
    entry["flow_embedding"] = entry["flow_embedding"].to(torch.bfloat16)
    (record,) = read_spk2info(as_bytes({"x": entry}), decode)
    assert (record.speech_tokens.dtype, record.prompt_mel.dtype, record.embedding.dtype) == (
        np.int32, np.float32, np.float32)  # fmt: skip


def test_sft_only_schema_loads():
    embedding = torch.randn(1, 192)
    v1_instruct = {"embedding": torch.randn(1, 192), "speech_token": torch.zeros(1, 7, dtype=torch.int32),
                   "speech_feat": torch.zeros(1, 9, 80)}  # v1 extras without a prompt_text: ignored
    loaded = read_spk2info(as_bytes({"中文女": {"embedding": embedding}, "英文男": v1_instruct}), decode)
    assert [r.name for r in loaded] == ["中文女", "英文男"]
    for record in loaded:
        assert record.preset and record.prompt_text == "" and record.num_tokens == 0
        assert record.prompt_mel.shape == (0, 80)
    np.testing.assert_array_equal(loaded[0].embedding, embedding[0].numpy())


def test_async_schema_loads_and_ignores_extra_keys():
    entry = async_entry("希望你以后能够做的比我还好呦。", num_tokens=6) | {
        "prompt_text_token": torch.zeros(1, 3, dtype=torch.int32), "spk_id": "001", "name": None}
    (record,) = read_spk2info(as_bytes({"001": entry}), decode)
    assert record.name == "001" and record.prompt_text == "希望你以后能够做的比我还好呦。"
    assert record.num_tokens == 6 and record.prompt_mel.shape == (12, 80)
    np.testing.assert_array_equal(record.speech_tokens, entry["speech_token"][0].numpy())


@pytest.mark.slow
def test_tiny_model_spk2info_loads(tiny_model_dir):
    (record,) = read_spk2info(tiny_model_dir / "spk2info.pt", decode)
    assert record.preset and record.embedding.shape == (192,)


def test_tokenizer_round_trip_en_zh_and_special_tokens(tmp_path):
    from services.common.modeldir.tokenizer import CosyVoiceTokenizer
    from services.tinymodel.tokenizer_files import write_tokenizer_dir

    write_tokenizer_dir(tmp_path / "CosyVoice-BlankEN")
    tokenizer = CosyVoiceTokenizer.from_dir(tmp_path / "CosyVoice-BlankEN")

    def decode_keeping_specials(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False)

    texts = ["The quick brown fox, 1234!", "今天天气很好，我们去公园散步吧。",
             "You are a helpful assistant.<|endofprompt|>希望你以后能够做的比我还好呦。"]  # fmt: skip
    for text in texts:
        assert decode_keeping_specials(tokenizer.encode(text)) == text
    records = [voice(f"s{i}", i, text) for i, text in enumerate(texts)]
    data = write_spk2info(records, "official", tokenizer.encode)
    written = torch.load(io.BytesIO(data), weights_only=True)
    assert tokenizer.endofprompt_id in written["s2"]["prompt_text"][0].tolist()
    assert [r.prompt_text for r in read_spk2info(data, decode_keeping_specials)] == texts


def _broken(change) -> bytes:
    entry = reference_entry(encode("hi"), num_tokens=4)
    change(entry)
    return as_bytes({"A": entry})


def _set(key, value):
    return lambda entry: entry.__setitem__(key, value)


MALFORMED = {
    "garbage": (b"\x00\x01 definitely not a torch file", re.escape("uploaded file: not a spk2info.pt file (torch.load cannot read it)")),
    "not a dict": (as_bytes([torch.zeros(3)]), "uploaded file: expected a dict of speaker id -> entry, got list"),
    "int speaker id": (as_bytes({7: {"embedding": torch.ones(1, 192)}}), "speaker id 7 is not a string"),
    "entry not a dict": (as_bytes({"A": torch.ones(1, 192)}), "speaker 'A': expected a dict entry, got Tensor"),
    "unknown keys": (as_bytes({"A": {"foo": torch.ones(1)}}), r"speaker 'A': unrecognised entry with keys \['foo'\]"),
    "missing key": (_broken(lambda e: e.pop("flow_embedding")), "speaker 'A': missing key 'flow_embedding'"),
    "missing len": (_broken(lambda e: e.pop("prompt_text_len")), "speaker 'A': missing key 'prompt_text_len'"),
    "mel not 2N": (_broken(_set("prompt_speech_feat", torch.zeros(1, 9, 80))),
                   r"speaker 'A': key 'prompt_speech_feat_len': says 8 but 'prompt_speech_feat' has 9"),
    "mel 2N+1 with len": (_broken(lambda e: e.update(prompt_speech_feat=torch.ones(1, 9, 80),
                                                       prompt_speech_feat_len=torch.tensor([9], dtype=torch.int32))),
                          r"speaker 'A': key 'prompt_speech_feat': expected shape \(8, 80\)"),
    "mel bins": (_broken(_set("prompt_speech_feat", torch.ones(1, 8, 81))),
                 r"speaker 'A': key 'prompt_speech_feat': expected shape \(8, 80\)"),
    "batch of 2": (_broken(_set("prompt_speech_feat", torch.ones(2, 8, 80))),
                   r"key 'prompt_speech_feat': expected 3 dimensions with batch size 1, got shape \(2, 8, 80\)"),
    "short embedding": (_broken(_set("flow_embedding", torch.ones(1, 191))),
                        r"speaker 'A': key 'flow_embedding': expected shape \(192,\)"),
    "nan embedding": (_broken(_set("flow_embedding", torch.full((1, 192), float("nan")))),
                      "speaker 'A': key 'flow_embedding': contains NaN"),
    "token range": (_broken(lambda e: e["llm_prompt_speech_token"].fill_(7000)),
                    r"speaker 'A': key 'llm_prompt_speech_token': id 7000 outside \[0, 6561\)"),
    "float tokens": (_broken(_set("flow_prompt_speech_token", torch.zeros(1, 4))),
                     "key 'flow_prompt_speech_token': expected an integer tensor, got torch.float32"),
    "tokens differ": (_broken(_set("flow_prompt_speech_token", torch.zeros(1, 4, dtype=torch.int32))),
                      "key 'flow_prompt_speech_token': differs from 'llm_prompt_speech_token'"),
    "list not tensor": (_broken(_set("prompt_speech_feat", [[0.0] * 80] * 8)),
                        "key 'prompt_speech_feat': expected a tensor, got list"),
    "bad name": (as_bytes({"a/b": {"embedding": torch.ones(1, 192)}}), "speaker 'a/b': name: 'a/b' contains '/'"),
    "async text not str": (as_bytes({"001": async_entry("x") | {"prompt_text": 5}}),
                           "speaker '001': key 'prompt_text': expected a str, got int"),
    "async missing feat": (as_bytes({"001": {k: v for k, v in async_entry("x").items() if k != "speech_feat"}}),
                           "speaker '001': missing key 'speech_feat'"),
}  # fmt: skip


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_files_give_one_line_value_errors(case):
    data, message = MALFORMED[case]
    with pytest.raises(ValueError, match=message) as caught:
        read_spk2info(data, decode)
    assert "\n" not in str(caught.value)
    # No torch exception chained under ours: the one line is the whole story.
    error = caught.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_arbitrary_pickles_are_refused_not_run(tmp_path, capsys):
    buffer = io.BytesIO()
    torch.save({"A": _Evil()}, buffer, pickle_module=pickle)
    with pytest.raises(ValueError) as caught:
        read_spk2info(buffer.getvalue(), decode)
    assert str(caught.value) == (
        "uploaded file: not a spk2info.pt file (it holds Python objects other than tensors, which are never loaded)"
    )
    assert "\n" not in str(caught.value) and "this must never run" not in capsys.readouterr().out
    with pytest.raises(ValueError, match=f"{tmp_path / 'missing.pt'}: cannot read: "):
        read_spk2info(tmp_path / "missing.pt", decode)


def test_undecodable_prompt_text_names_the_key():
    data = as_bytes({"A": reference_entry([0xFF, 0xFE], num_tokens=2)})
    with pytest.raises(ValueError, match="speaker 'A': key 'prompt_text': cannot decode the token ids: "):
        read_spk2info(data, decode)


def test_write_refuses_bad_input():
    with pytest.raises(ValueError, match="schema: expected one of"):
        write_spk2info(RECORDS, "triton", encode)
    with pytest.raises(ValueError, match="speaker 'alice': appears more than once"):
        write_spk2info([RECORDS[0], RECORDS[0]], "official", encode)
    bad = SpeakerRecord("bad", "", np.zeros(2, np.int64), np.zeros((4, 80), np.float32), np.ones(192, np.float32))
    with pytest.raises(ValueError, match="speaker 'bad': speech_tokens: expected dtype int32"):
        write_spk2info([bad], "async", encode)


def test_a_sparse_tensor_is_refused_with_a_message():
    data = as_bytes({"A": {"embedding": torch.zeros(1, 192).to_sparse()}})
    with pytest.raises(ValueError) as caught:
        read_spk2info(data, decode)
    assert str(caught.value).startswith("uploaded file: speaker 'A': key 'embedding': expected a dense tensor")
