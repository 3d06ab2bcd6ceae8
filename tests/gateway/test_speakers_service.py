"""The Speakers registry over the in-process stack (real gRPC): the lifecycle of a voice, name
rules, presets being read-only, all-or-nothing registration and import, spk2info.pt export and
import round trips in both schemas, and a SQLite registry surviving a gateway restart.

Tests share one stack per module; each uses its own speaker names and compares the listing
before and after itself, so they do not depend on each other's order.
"""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import pytest_asyncio

from services.common.pb import speakers_pb2, tts_pb2
from services.common.speakers import SpeakerRecord
from tests.gateway.voice_helpers import (
    f32,
    prompt_sample,
    shorten_speech,
    speaker_features,
    speaker_names,
    speakers_call,
    speakers_error,
    synthesize,
    synthesize_error,
    tone,
    wav_bytes,
)
from tests.stack import running_stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_RATIO = 3.0  # short speech: see voice_helpers.shorten_speech
TEXT = "Hello there."
F32 = tts_pb2.AUDIO_ENCODING_PCM_F32LE
NOT_REGISTERED = "name: {!r} is not a registered or preset speaker"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tiny_model_dir):
    async with running_stack(tiny_model_dir) as stack:
        shorten_speech(stack, MAX_RATIO)
        yield stack


@pytest.fixture(scope="module")
def sample(tiny_model_dir):
    return prompt_sample(tiny_model_dir)


def other_recording() -> tuple[bytes, str]:
    return wav_bytes(tone(2.0, 16000), 16000), "Another voice entirely."


async def register(address, name, recording, **fields):
    audio, text = recording
    request = speakers_pb2.RegisterSpeakerRequest(name=name, prompt=tts_pb2.PromptAudio(audio=audio, text=text), **fields)
    return await speakers_call(address, "RegisterSpeaker", request)


async def register_error(address, name, recording, **fields):
    audio, text = recording
    request = speakers_pb2.RegisterSpeakerRequest(name=name, prompt=tts_pb2.PromptAudio(audio=audio, text=text), **fields)
    return await speakers_error(address, "RegisterSpeaker", request)


async def get_error(address, name):
    return await speakers_error(address, "GetSpeaker", speakers_pb2.GetSpeakerRequest(name=name))


async def export(address, schema, names=()):
    request = speakers_pb2.ExportSpeakersRequest(schema=schema, names=list(names))
    return (await speakers_call(address, "ExportSpeakers", request)).spk2info


async def import_(address, data, overwrite=False):
    request = speakers_pb2.ImportSpeakersRequest(spk2info=data, overwrite=overwrite)
    return list((await speakers_call(address, "ImportSpeakers", request)).names)


async def delete(address, name):
    await speakers_call(address, "DeleteSpeaker", speakers_pb2.DeleteSpeakerRequest(name=name))


# ------------------------------------------------------------------------------- lifecycle


async def test_register_list_get_synthesize_delete(stack, sample):
    started = time.time()
    speaker = await register(stack.address, "bob", sample)
    assert speaker.name == "bob" and not speaker.preset
    assert speaker.prompt_text == "Hello, this is a short sample of my voice."  # normalised (unchanged here)
    assert speaker.num_prompt_tokens == 75  # 3 s at 25 tokens a second
    assert started - 1 <= speaker.created_at_unix <= time.time() + 1
    assert not speaker.HasField("features")

    listed = await speaker_names(stack.address)
    assert ("bob", False) in listed and ("default", True) in listed  # presets are marked
    assert [name for name, _ in listed] == sorted(name for name, _ in listed)

    got = await speakers_call(stack.address, "GetSpeaker", speakers_pb2.GetSpeakerRequest(name="bob"))
    assert not got.HasField("features")
    assert (got.name, got.prompt_text, got.num_prompt_tokens, got.created_at_unix) == (
        "bob", speaker.prompt_text, 75, speaker.created_at_unix
    )
    features = await speaker_features(stack.address, "bob")
    assert features.tokens.shape == (75,) and features.tokens.dtype == np.int32
    assert features.mel.shape == (150, 80) and features.mel.dtype == np.float32
    assert features.embedding.shape == (192,) and np.any(features.embedding)

    responses = await synthesize(stack.address, text=TEXT, speaker_id="bob", seed=1)
    assert len(responses) == 1 and len(responses[0].audio) > 0

    await delete(stack.address, "bob")
    error = await get_error(stack.address, "bob")
    assert error.code() == grpc.StatusCode.NOT_FOUND and error.details() == NOT_REGISTERED.format("bob")
    assert "bob" not in [name for name, _ in await speaker_names(stack.address)]
    error = await synthesize_error(stack.address, text=TEXT, speaker_id="bob")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "speaker_id: 'bob' is not a registered or preset speaker"


async def test_a_preset_is_readable(stack):
    preset = await speakers_call(stack.address, "GetSpeaker", speakers_pb2.GetSpeakerRequest(name="default"))
    assert (preset.preset, preset.prompt_text, preset.num_prompt_tokens, preset.created_at_unix) == (True, "", 0, 0.0)
    features = await speaker_features(stack.address, "default")
    assert features.tokens.shape == (0,) and features.mel.shape == (0, 80) and features.embedding.shape == (192,)


async def test_duplicate_name_then_overwrite(stack, sample):
    await register(stack.address, "carol", sample)
    first = await speaker_features(stack.address, "carol")
    error = await register_error(stack.address, "carol", other_recording())
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error.details() == "name: speaker 'carol' already exists (set overwrite to replace it)"
    assert (await speaker_features(stack.address, "carol")).same(first)  # untouched

    replaced = await register(stack.address, "carol", other_recording(), overwrite=True)
    assert replaced.prompt_text == "Another voice entirely."
    assert replaced.num_prompt_tokens == 50  # the 2 s recording
    now = await speaker_features(stack.address, "carol")
    assert now.tokens.shape == (50,) and not np.array_equal(now.embedding, first.embedding)
    assert [name for name, _ in await speaker_names(stack.address)].count("carol") == 1
    await delete(stack.address, "carol")


@pytest.mark.parametrize("overwrite", [False, True])
async def test_a_preset_name_cannot_be_registered(stack, sample, overwrite):
    before = await speaker_names(stack.address)
    error = await register_error(stack.address, "default", sample, overwrite=overwrite)
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error.details() == "name: 'default' is a preset speaker of the model; choose another name"
    assert await speaker_names(stack.address) == before


async def test_a_preset_cannot_be_deleted(stack):
    error = await speakers_error(stack.address, "DeleteSpeaker", speakers_pb2.DeleteSpeakerRequest(name="default"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "name: 'default' is a preset speaker of the model; presets are read-only"
    assert ("default", True) in await speaker_names(stack.address)


async def test_deleting_an_unknown_speaker_is_not_found(stack):
    error = await speakers_error(stack.address, "DeleteSpeaker", speakers_pb2.DeleteSpeakerRequest(name="ghost"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "name: 'ghost' is not a registered speaker"
    error = await speakers_error(stack.address, "DeleteSpeaker", speakers_pb2.DeleteSpeakerRequest(name=""))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == "name: must not be empty"


async def test_get_unknown_or_empty_name(stack):
    error = await get_error(stack.address, "ghost")
    assert error.code() == grpc.StatusCode.NOT_FOUND and error.details() == NOT_REGISTERED.format("ghost")
    error = await get_error(stack.address, "")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == "name: must not be empty"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "name: must be 1 to 128 characters, got 0"),
        ("a/b", "name: 'a/b' contains '/'"),
        ("x" * 129, "name: must be 1 to 128 characters, got 129"),
        (" padded", "name: ' padded' has leading or trailing whitespace"),
        ("two\nlines", "name: 'two\\nlines' contains a control or non-printable character"),
    ],
)
async def test_bad_names_are_invalid(stack, sample, name, message):
    before = await speaker_names(stack.address)
    error = await register_error(stack.address, name, sample)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == message
    assert await speaker_names(stack.address) == before


async def test_longest_name_is_accepted(stack, sample):
    name = "n" * 128
    assert (await register(stack.address, name, sample)).name == name
    await delete(stack.address, name)


@pytest.mark.parametrize(
    ("recording", "message"),
    [
        ((b"not audio", "Hi there."), "prompt.audio: cannot decode the audio (WAV, FLAC, OGG/Opus or MP3 expected): "),
        ((wav_bytes(np.zeros(16000, np.float32), 16000), "Hi there."),
         "prompt.audio: the recording is silent (peak below -80 dBFS)"),
        ((wav_bytes(tone(1.0, 8000), 8000), "Hi there."),
         "prompt.audio: 8000 Hz is below the minimum sample rate of 16000 Hz"),
        ((wav_bytes(tone(31.0, 16000), 16000), "Hi there."), "prompt.audio: 31.0 s is longer than the 30 s limit"),
        ((b"", "Hi there."), "prompt.audio: must not be empty"),
        (("SAMPLE", ""), "prompt.text: the transcript of prompt.audio is required"),
        (("SAMPLE", " \n"), "prompt.text: the transcript of prompt.audio is required"),
        (("SAMPLE", "x" * 1001), "prompt.text: longer than 1000 characters"),
    ],
)
async def test_registration_with_bad_input_stores_nothing(stack, sample, recording, message):
    if recording[0] == "SAMPLE":
        recording = (sample[0], recording[1])
    before = await speaker_names(stack.address)
    error = await register_error(stack.address, "failed", recording)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    if message.endswith(": "):  # libsndfile's reason follows, not the address of a Python object
        assert error.details().startswith(message) and "BytesIO" not in error.details()
    else:
        assert error.details() == message
    assert await speaker_names(stack.address) == before
    assert (await get_error(stack.address, "failed")).code() == grpc.StatusCode.NOT_FOUND


# ------------------------------------------------------------------------------- spk2info files


async def test_export_both_schemas_and_import_into_a_fresh_stack(stack, sample, tiny_model_dir):
    await register(stack.address, "dora", sample)
    await register(stack.address, "emil", other_recording())
    originals = {name: await speaker_features(stack.address, name) for name in ("dora", "emil")}
    texts = {name: (await speakers_call(stack.address, "GetSpeaker", speakers_pb2.GetSpeakerRequest(name=name))).prompt_text
             for name in originals}
    official = await export(stack.address, speakers_pb2.SPK2INFO_SCHEMA_OFFICIAL, ["dora", "emil"])
    unspecified = await export(stack.address, speakers_pb2.SPK2INFO_SCHEMA_UNSPECIFIED, ["dora", "emil"])
    asynchronous = await export(stack.address, speakers_pb2.SPK2INFO_SCHEMA_ASYNC, ["dora", "emil"])
    assert official[:2] == b"PK" and asynchronous[:2] == b"PK"  # torch.save zip files
    assert official != asynchronous
    audio = f32(await synthesize(stack.address, text=TEXT, speaker_id="dora", seed=4, encoding=F32))[0]
    for name in originals:
        await delete(stack.address, name)

    async with running_stack(tiny_model_dir) as fresh:
        shorten_speech(fresh, MAX_RATIO)
        for data in (official, unspecified, asynchronous):
            assert await import_(fresh.address, data) == ["dora", "emil"]
            assert await speaker_names(fresh.address) == [("default", True), ("dora", False), ("emil", False)]
            for name, features in originals.items():
                assert (await speaker_features(fresh.address, name)).same(features), name
                got = await speakers_call(fresh.address, "GetSpeaker", speakers_pb2.GetSpeakerRequest(name=name))
                assert got.prompt_text == texts[name] and got.created_at_unix > 0 and not got.preset
            # The imported voice speaks as the registered one did. Not bit for bit: another stack
            # instance, whose float reductions may be ordered differently (seen: 1 LSB of int16).
            again = f32(await synthesize(fresh.address, text=TEXT, speaker_id="dora", seed=4, encoding=F32))[0]
            assert again.shape == audio.shape
            np.testing.assert_allclose(again, audio, atol=1e-5, rtol=0)
            for name in originals:
                await delete(fresh.address, name)


async def test_export_errors(stack):
    error = await speakers_error(stack.address, "ExportSpeakers", speakers_pb2.ExportSpeakersRequest(names=["ghost"]))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "names: 'ghost' is not a registered speaker"
    error = await speakers_error(stack.address, "ExportSpeakers", speakers_pb2.ExportSpeakersRequest(names=["default"]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "names: 'default' is a preset speaker; only registered speakers are exported"
    error = await speakers_error(stack.address, "ExportSpeakers", speakers_pb2.ExportSpeakersRequest(schema=7))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == "schema: unknown value 7"


async def test_a_name_listed_twice_is_exported_once(stack, sample):
    # Found by the API fuzz: the frontend refused the repeated speaker and the caller got INTERNAL.
    await register(stack.address, "gus", sample)
    data = await export(stack.address, speakers_pb2.SPK2INFO_SCHEMA_OFFICIAL, ["gus", "gus"])
    assert await import_(stack.address, data, overwrite=True) == ["gus"]
    await delete(stack.address, "gus")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"definitely not a torch file", "spk2info: uploaded file: not a spk2info.pt file (torch.load cannot read it)"),
        (b"", "spk2info: the file is empty"),
    ],
)
async def test_import_of_garbage_is_invalid_and_stores_nothing(stack, data, message):
    before = await speaker_names(stack.address)
    error = await speakers_error(stack.address, "ImportSpeakers", speakers_pb2.ImportSpeakersRequest(spk2info=data))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(message) and "\n" not in error.details()
    assert await speaker_names(stack.address) == before


async def test_import_is_all_or_nothing(stack, sample):
    await register(stack.address, "gina", sample)
    await register(stack.address, "hugo", other_recording())
    gina = await speaker_features(stack.address, "gina")
    data = await export(stack.address, speakers_pb2.SPK2INFO_SCHEMA_OFFICIAL, ["gina", "hugo"])
    await delete(stack.address, "hugo")
    before = await speaker_names(stack.address)

    error = await speakers_error(stack.address, "ImportSpeakers", speakers_pb2.ImportSpeakersRequest(spk2info=data))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error.details() == "spk2info: speakers ['gina'] already exist (set overwrite to replace them, or skip_existing to import the others)"
    assert await speaker_names(stack.address) == before  # hugo, new in the file, was not stored either

    assert await import_(stack.address, data, overwrite=True) == ["gina", "hugo"]
    assert (await speaker_features(stack.address, "gina")).same(gina)
    assert ("hugo", False) in await speaker_names(stack.address)
    for name in ("gina", "hugo"):
        await delete(stack.address, name)


async def test_import_of_a_presets_name_is_refused_and_stores_nothing(stack, sample):
    # A file holding a new speaker and one named like the model's preset.
    await register(stack.address, "ivan", sample)
    ivan = await speaker_features(stack.address, "ivan")
    await delete(stack.address, "ivan")
    records = [
        SpeakerRecord(name, "Hello.", ivan.tokens, ivan.mel, ivan.embedding) for name in ("ivan", "default")
    ]
    data = await stack.frontend.servicer.runner.write_table(records, "official")
    before = await speaker_names(stack.address)
    for overwrite in (False, True):
        error = await speakers_error(stack.address, "ImportSpeakers",
                                     speakers_pb2.ImportSpeakersRequest(spk2info=data, overwrite=overwrite))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        assert error.details() == "spk2info: 'default' is a preset speaker of the model; choose another name"
        assert await speaker_names(stack.address) == before


async def test_import_with_skip_existing_leaves_taken_names_alone(stack, sample):
    await register(stack.address, "jane", sample)
    jane = await speaker_features(stack.address, "jane")
    records = [SpeakerRecord(name, "Hello.", jane.tokens, jane.mel, jane.embedding) for name in ("jane", "default", "kim")]
    data = await stack.frontend.servicer.runner.write_table(records, "official")
    request = speakers_pb2.ImportSpeakersRequest(spk2info=data, skip_existing=True)
    response = await speakers_call(stack.address, "ImportSpeakers", request)
    assert list(response.names) == ["kim"] and list(response.skipped) == ["jane", "default"]
    assert (await speaker_features(stack.address, "jane")).same(jane)  # untouched
    both = speakers_pb2.ImportSpeakersRequest(spk2info=data, skip_existing=True, overwrite=True)
    error = await speakers_error(stack.address, "ImportSpeakers", both)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "skip_existing: cannot be combined with overwrite"
    for name in ("jane", "kim"):
        await delete(stack.address, name)


# ------------------------------------------------------------------------------- persistence


async def test_a_sqlite_registry_survives_a_gateway_restart(tiny_model_dir, tmp_path, sample):
    database = tmp_path / "speakers.db"
    async with running_stack(tiny_model_dir, speaker_db=str(database)) as first:
        created = await register(first.address, "jane", sample)
        features = await speaker_features(first.address, "jane")
    assert database.exists()
    async with running_stack(tiny_model_dir, speaker_db=str(database)) as second:
        assert await speaker_names(second.address) == [("default", True), ("jane", False)]
        again = await speakers_call(second.address, "GetSpeaker", speakers_pb2.GetSpeakerRequest(name="jane"))
        assert (again.prompt_text, again.num_prompt_tokens, again.created_at_unix) == (
            created.prompt_text, created.num_prompt_tokens, created.created_at_unix
        )
        assert (await speaker_features(second.address, "jane")).same(features)
        await delete(second.address, "jane")
        assert await speaker_names(second.address) == [("default", True)]


@pytest.mark.parametrize(("text_frontend", "normalised"), [(None, True), (True, True), (False, False)])
async def test_the_transcript_is_normalised_unless_text_frontend_is_off(stack, sample, text_frontend, normalised):
    raw = "Call me at 911, at 3 pm."
    fields = {} if text_frontend is None else {"text_frontend": text_frontend}
    speaker = await register(stack.address, "kim", (sample[0], raw), overwrite=True, **fields)
    expected = stack.frontend.servicer.runner.text.normalize_prompt(raw, True) if normalised else raw
    assert speaker.prompt_text == expected
    assert normalised == (speaker.prompt_text != raw)  # the normaliser really changes this text
    await delete(stack.address, "kim")
