"""spk2info.pt import and export: the reference's speaker caches <-> SpeakerRecord.

Runs in the frontend process (it needs torch to unpickle); the gateway stays torch-free and only
sees SpeakerRecords. Files are always read with `weights_only=True`: a spk2info.pt comes from
users, and a full unpickle would run any code it carries.

Per-speaker schemas read (the file is a dict speaker id -> entry; tensors may sit on any device;
"(1, X)" also accepts the unbatched "(X,)"; integer tensors may be any integer dtype and floats
any float dtype, converted to int32 / float32):

- official, what `CosyVoice2.add_zero_shot_spk` caches and `save_spkinfo` saves (cosyvoice-facts
  §7.7): prompt_text int32 (1, T) text-token ids; prompt_text_len int32 (1,) = T;
  llm_prompt_speech_token and flow_prompt_speech_token int32 (1, N), equal (the reference stores
  the same tensor twice); their *_len int32 (1,) = N; prompt_speech_feat float32 (1, 2N, 80);
  prompt_speech_feat_len int32 (1,) = 2N; llm_embedding and flow_embedding float32 (1, 192). The
  flow's copy is kept (v2/v3 ignore the LLM's). N = 0 makes an embedding-only preset.
- sft: {'embedding': float32 (1, 192)} (CosyVoice-300M-SFT presets; `frontend_sft` reads only
  this key). Other keys next to 'embedding' without a 'prompt_text' (v1 Instruct files carry
  v1 speech_token/speech_feat, useless to a v2 flow) are ignored.
- async, the async_cosyvoice "001" entry the Triton runtime reads: prompt_text str; speech_token
  int32 (1, N); speech_feat float32 (1, 2N, 80); embedding float32 (1, 192). Extra keys of newer
  async_cosyvoice files (prompt_text_token, spk_id, name) are ignored. Shapes are as the Triton
  token2wav model uses them (`speech_token.shape[1]`, `speech_feat` as the flow's prompt_feat).

`preset` is True exactly for embedding-only entries (N = 0); `created_at` is 0.0 (the registry
stamps it). Text-token ids are turned into text with `decode_text`, which must keep special
tokens: v3 prompts carry <|endofprompt|>.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from services.common.speakers import SPEECH_VOCAB_SIZE, SpeakerRecord, validate

SCHEMAS = ("official", "async")

# Keys only the official schema has; 'prompt_text' is shared (ids there, a str in async).
_OFFICIAL_ONLY = frozenset({
    "prompt_text_len", "llm_prompt_speech_token", "llm_prompt_speech_token_len",
    "flow_prompt_speech_token", "flow_prompt_speech_token_len", "prompt_speech_feat",
    "prompt_speech_feat_len", "llm_embedding", "flow_embedding",
})  # fmt: skip
_ASYNC_ONLY = frozenset({"speech_token", "speech_feat"})
# Where each record field came from, so a failed `validate` names the file's key.
_FIELD_KEYS = {
    "official": {"speech_tokens": "flow_prompt_speech_token", "prompt_mel": "prompt_speech_feat",
                 "embedding": "flow_embedding", "prompt_text": "prompt_text"},
    "async": {"speech_tokens": "speech_token", "prompt_mel": "speech_feat",
              "embedding": "embedding", "prompt_text": "prompt_text"},
    "sft": {"embedding": "embedding"},
}  # fmt: skip


def read_spk2info(source: bytes | Path, decode_text: Callable[[list[int]], str]) -> list[SpeakerRecord]:
    """Every speaker of a spk2info.pt (file contents or path), in file order.

    Raises ValueError with a one-line message naming the speaker and the key for anything
    malformed, including files torch cannot load and files that cannot be read.
    """
    if isinstance(source, bytes):
        label, data = "uploaded file", source
    else:
        label = str(source)
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise ValueError(f"{label}: cannot read: {exc.strerror or exc}") from None
    try:
        info = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad pickle
        # torch's own words for garbage ("pop from empty list") mean nothing to a user.
        if "unsupported global" in str(exc).lower():  # a real pickle of something not allowed
            why = "it holds Python objects other than tensors, which are never loaded"
        else:
            why = "torch.load cannot read it"
        raise ValueError(f"{label}: not a spk2info.pt file ({why})") from None
    if not isinstance(info, dict):
        raise ValueError(f"{label}: expected a dict of speaker id -> entry, got {type(info).__name__}")
    records = []
    for speaker_id, entry in info.items():
        if not isinstance(speaker_id, str):
            raise ValueError(f"{label}: speaker id {speaker_id!r} is not a string")
        try:
            records.append(_record(speaker_id, entry, decode_text))
        except ValueError as exc:
            raise ValueError(f"{label}: speaker {speaker_id!r}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - an odd tensor torch loaded but cannot convert
            raise ValueError(f"{label}: speaker {speaker_id!r}: unsupported content ({type(exc).__name__})") from None
    return records


def write_spk2info(
    records: Sequence[SpeakerRecord], schema: str, encode_text: Callable[[str], list[int]]
) -> bytes:
    """The bytes of a spk2info.pt holding `records`.

    "official" is what the reference's save_spkinfo writes, usable as
    `inference_zero_shot(..., zero_shot_spk_id=name)`; embedding-only records are written as
    {'embedding': (1, 192)}, what `inference_sft` reads. "async" is the async_cosyvoice schema
    (the Triton runtime uses the speaker named "001"). `encode_text` is the model's tokenizer.
    """
    if schema not in SCHEMAS:
        raise ValueError(f"schema: expected one of {SCHEMAS}, got {schema!r}")
    info: dict[str, dict[str, Any]] = {}
    for record in records:
        try:
            validate(record)
        except ValueError as exc:
            raise ValueError(f"speaker {getattr(record, 'name', None)!r}: {exc}") from None
        if record.name in info:
            raise ValueError(f"speaker {record.name!r}: appears more than once")
        text_ids = torch.tensor([list(encode_text(record.prompt_text))], dtype=torch.int32).reshape(1, -1)
        tokens = torch.from_numpy(np.array(record.speech_tokens, dtype=np.int32))[None]
        mel = torch.from_numpy(np.array(record.prompt_mel, dtype=np.float32))[None]
        embedding = torch.from_numpy(np.array(record.embedding, dtype=np.float32))[None]
        if schema == "async":
            info[record.name] = {"prompt_text": record.prompt_text, "prompt_text_token": text_ids,
                                 "speech_token": tokens, "speech_feat": mel, "embedding": embedding}
        elif record.is_embedding_only:
            info[record.name] = {"embedding": embedding}
        else:
            # Shared tensor objects, exactly as frontend_zero_shot builds the dict.
            token_len = torch.tensor([tokens.shape[1]], dtype=torch.int32)
            info[record.name] = {
                "prompt_text": text_ids,
                "prompt_text_len": torch.tensor([text_ids.shape[1]], dtype=torch.int32),
                "llm_prompt_speech_token": tokens, "llm_prompt_speech_token_len": token_len,
                "flow_prompt_speech_token": tokens, "flow_prompt_speech_token_len": token_len,
                "prompt_speech_feat": mel,
                "prompt_speech_feat_len": torch.tensor([mel.shape[1]], dtype=torch.int32),
                "llm_embedding": embedding, "flow_embedding": embedding,
            }  # fmt: skip
    buffer = io.BytesIO()
    torch.save(info, buffer)
    return buffer.getvalue()


def _record(speaker_id: str, entry: object, decode_text: Callable[[list[int]], str]) -> SpeakerRecord:
    if not isinstance(entry, dict):
        raise ValueError(f"expected a dict entry, got {type(entry).__name__}")
    schema = _schema_of(entry)
    if schema == "official":
        text_ids = _integers(entry, "prompt_text", 1, upper=2**31)
        _check_length(entry, "prompt_text_len", text_ids.shape[0])
        tokens = _integers(entry, "llm_prompt_speech_token", 1, upper=SPEECH_VOCAB_SIZE)
        _check_length(entry, "llm_prompt_speech_token_len", tokens.shape[0])
        flow_tokens = _integers(entry, "flow_prompt_speech_token", 1, upper=SPEECH_VOCAB_SIZE)
        _check_length(entry, "flow_prompt_speech_token_len", flow_tokens.shape[0])
        if not np.array_equal(tokens, flow_tokens):
            raise ValueError("key 'flow_prompt_speech_token': differs from 'llm_prompt_speech_token'")
        mel = _floats(entry, "prompt_speech_feat", 2)
        _check_length(entry, "prompt_speech_feat_len", mel.shape[0])
        _floats(entry, "llm_embedding", 1)  # checked for presence and rank; v2/v3 ignore it
        embedding = _floats(entry, "flow_embedding", 1)
        text = _decode(decode_text, text_ids)
    elif schema == "async":
        text = entry.get("prompt_text")
        if not isinstance(text, str):
            raise ValueError(f"key 'prompt_text': expected a str, got {type(text).__name__}")
        tokens = _integers(entry, "speech_token", 1, upper=SPEECH_VOCAB_SIZE)
        mel = _floats(entry, "speech_feat", 2)
        embedding = _floats(entry, "embedding", 1)
    else:
        text, embedding = "", _floats(entry, "embedding", 1)
        tokens, mel = np.zeros(0, np.int32), np.zeros((0, 80), np.float32)
    record = SpeakerRecord(speaker_id, text, tokens, mel, embedding, preset=tokens.shape[0] == 0)
    try:
        validate(record)
    except ValueError as exc:
        field, _, detail = str(exc).partition(": ")
        key = _FIELD_KEYS[schema].get(field)
        raise ValueError(f"key {key!r}: {detail}" if key else str(exc)) from None
    return record


def _schema_of(entry: dict) -> str:
    keys = set(entry)
    if keys & _OFFICIAL_ONLY or isinstance(entry.get("prompt_text"), torch.Tensor):
        return "official"
    if "prompt_text" in keys:
        return "async"
    if "embedding" in keys:
        return "sft"
    if keys & _ASYNC_ONLY:
        return "async"  # reported below as missing 'prompt_text'
    raise ValueError(
        f"unrecognised entry with keys {sorted(map(str, keys))}: expected the add_zero_shot_spk "
        "keys, the async_cosyvoice keys, or 'embedding'"
    )


def _array(entry: dict, key: str, core_ndim: int, want_float: bool) -> np.ndarray:
    if key not in entry:
        raise ValueError(f"missing key {key!r}")
    value = entry[key]
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"key {key!r}: expected a tensor, got {type(value).__name__}")
    if value.layout != torch.strided or value.is_quantized or value.is_meta:
        # weights_only still loads sparse, quantized and meta tensors; none converts to numpy.
        raise ValueError(f"key {key!r}: expected a dense tensor, got a {value.layout} one")
    is_int = not value.is_floating_point() and not value.is_complex() and value.dtype != torch.bool
    if want_float != value.is_floating_point() or (not want_float and not is_int):
        kind = "a floating-point" if want_float else "an integer"
        raise ValueError(f"key {key!r}: expected {kind} tensor, got {value.dtype}")
    value = value.detach().cpu()
    if want_float and value.dtype != torch.float64:
        value = value.float()  # numpy has no bfloat16
    array = value.numpy()
    if array.ndim == core_ndim + 1 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != core_ndim:
        raise ValueError(
            f"key {key!r}: expected {core_ndim + 1} dimensions with batch size 1, got shape {tuple(value.shape)}"
        )
    return array


def _integers(entry: dict, key: str, core_ndim: int, *, upper: int) -> np.ndarray:
    array = _array(entry, key, core_ndim, want_float=False)
    if array.size and (array.min() < 0 or array.max() >= upper):
        bad = array.min() if array.min() < 0 else array.max()
        raise ValueError(f"key {key!r}: id {int(bad)} outside [0, {upper})")
    return array.astype(np.int32)


def _floats(entry: dict, key: str, core_ndim: int) -> np.ndarray:
    return _array(entry, key, core_ndim, want_float=True).astype(np.float32)


def _check_length(entry: dict, key: str, actual: int) -> None:
    length = _array(entry, key, 0, want_float=False)
    if int(length) != actual:
        data_key = key.removesuffix("_len")
        raise ValueError(f"key {key!r}: says {int(length)} but {data_key!r} has {actual}")


def _decode(decode_text: Callable[[list[int]], str], ids: np.ndarray) -> str:
    try:
        return decode_text(ids.tolist())
    except Exception as exc:  # noqa: BLE001 - any tokenizer failure means ids it does not know
        raise ValueError(f"key 'prompt_text': cannot decode the token ids: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."
