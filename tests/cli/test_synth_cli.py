"""`cosyvoice synth` as real processes: each mode, the speed switch to a non-streaming request,
and every error path (exit 1, one stderr line, no output file left behind).

Few synthesis processes on purpose (each costs 1-3 s on the tiny model); the errors the
gateway rejects cost no synthesis, and the rest need no gateway at all."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import pytest

from tests.cli.cli_runner import assert_error, cosyvoice
from tests.stack import running_stack

TEXT = "Hi there."  # short: the random tiny LLM speaks up to its length limit


def wav_frames(path: Path) -> int:
    """Frames of a finished 24 kHz 16-bit mono WAV (sizes in the header patched)."""
    with wave.open(str(path)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
        frames = wav.getnframes()
        assert frames > 0 and len(wav.readframes(frames)) == 2 * frames
    assert path.stat().st_size == 44 + 2 * frames
    return frames


async def synth(out: Path, *args: str) -> int:
    run = await cosyvoice("synth", TEXT, "-o", str(out), *args)
    assert run.code == 0 and run.err == "", run
    assert run.out.startswith(f"wrote {out}: ")
    return wav_frames(out)


@pytest.mark.slow  # a whole stack and several CLI processes: about 10 s
async def test_every_mode_and_speed(tiny_model_dir, tmp_path):
    prompt = str(tiny_model_dir / "prompt_sample.wav")
    transcript = (tiny_model_dir / "prompt_sample.txt").read_text().strip()
    async with running_stack(tiny_model_dir) as stack:
        at = ("--address", stack.address)
        await synth(tmp_path / "sft.wav", "--mode", "sft", "--seed", "3", *at)  # the model's default preset
        await synth(tmp_path / "cross.wav", "--mode", "cross_lingual", "--prompt-audio", prompt,
                    "--no-text-frontend", *at)
        await synth(tmp_path / "instruct.wav", "--mode", "instruct2", "--instruct", "Speak slowly.",
                    "--prompt-audio", prompt, *at)
        zero_shot = ("--mode", "zero_shot", "--prompt-audio", prompt, "--prompt-text", transcript, "--seed", "5", *at)
        normal = await synth(tmp_path / "zero.wav", *zero_shot)
        fast = await synth(tmp_path / "fast.wav", *zero_shot, "--speed", "1.5")
        # Same seed, same speech tokens; the speed only stretches the mel, so the lengths
        # scale by 1/speed (the band allows for the vocoder's framing).
        assert 1.35 < normal / fast < 1.65, (normal, fast)

        out = tmp_path / "rejected.wav"
        out.write_bytes(b"old")  # a failed call writes a temporary file only: the old one stays
        runs = [
            await cosyvoice("synth", TEXT, "-o", str(out), "--speaker-id", "nobody", *at),
            await cosyvoice("synth", TEXT, "-o", str(out), "--mode", "sft", "--prompt-audio", prompt, *at),
            await cosyvoice("synth", TEXT, "-o", str(out), "--speed", "3", *at),
            await cosyvoice("synth", TEXT, "-o", str(out), "--mode", "zero_shot", "--prompt-audio", prompt, *at),
        ]
        assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir() if p.suffix == ".part"] == []
    assert_error(runs[0], "cosyvoice synth: NOT_FOUND: --speaker: 'nobody' is not a registered or preset speaker")
    assert_error(runs[1], "cosyvoice synth: INVALID_ARGUMENT: prompt: sft speaks with a preset or registered "
                          "speaker's x-vector; with prompt audio use zero_shot, cross_lingual or instruct2")
    assert_error(runs[2], "cosyvoice synth: INVALID_ARGUMENT: speed: 3 is outside [0.5, 2.0]")
    assert_error(runs[3], "cosyvoice synth: INVALID_ARGUMENT: --prompt-text: zero_shot needs the transcript of "
                          "--prompt-audio")  # the gateway's field names, told as this CLI's flags


async def test_errors_without_a_gateway(tmp_path):
    nowhere = ("--address", "127.0.0.1:1")  # port 1 refuses connections
    out = str(tmp_path / "out.wav")
    missing = str(tmp_path / "missing.wav")
    unwritable = str(tmp_path / "no-such-dir" / "out.wav")
    prompt = tmp_path / "prompt.wav"
    prompt.write_bytes(b"RIFF")  # never sent: the flags conflict first
    runs = await asyncio.gather(
        cosyvoice("synth", TEXT, "-o", out, *nowhere),
        cosyvoice("synth", TEXT, "-o", out, "--prompt-audio", missing, *nowhere),
        cosyvoice("synth", TEXT, "-o", out, "--prompt-text", "Hi.", *nowhere),
        cosyvoice("synth", TEXT, "-o", out, "--speaker", "bob", "--prompt-audio", str(prompt), *nowhere),
        cosyvoice("synth", TEXT, "-o", unwritable, *nowhere),
        cosyvoice("synth", TEXT, "-o", out, "--mode", "fast", *nowhere),
        cosyvoice("synth", TEXT, "-o", out, "--seed", "-1", *nowhere),
        cosyvoice("synth", TEXT, "--speed", "1.5"),
        cosyvoice("synth", "--help"),
    )
    assert_error(runs[0], "cosyvoice synth: UNAVAILABLE: cannot reach the gateway at 127.0.0.1:1")
    assert_error(runs[1], f"cosyvoice synth: cannot read prompt audio {missing!r}: No such file or directory")
    assert_error(runs[2], "cosyvoice synth: --prompt-text needs --prompt-audio "
                          "(it is the transcript of that recording)")
    assert_error(runs[3], "cosyvoice synth: give the voice as --speaker or as --prompt-audio, not both")
    assert_error(runs[4], f"cosyvoice synth: cannot write {unwritable!r}: No such file or directory")
    assert not Path(out).exists()
    for usage in runs[5:8]:  # argparse's usage errors: exit 2, usage on stderr
        assert usage.code == 2 and "usage: cosyvoice synth" in usage.err and "Traceback" not in usage.err
    help_text = " ".join(runs[8].out.split())
    assert runs[8].code == 0 and "sends stream=false" in help_text and "--speaker-id" in help_text
