"""`cosyvoice speakers` as real processes against the in-process stack.

The CLI runs through asyncio subprocesses, so the event loop serving the stack keeps serving
while a command waits. Errors are asserted as exit 1 plus exactly one stderr line."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import pytest

from tests.cli.cli_runner import assert_error, assert_ok, cosyvoice
from tests.stack import running_stack

COLUMNS = ["NAME", "KIND", "TOKENS", "SECONDS", "TRANSCRIPT"]
NAME = "alice smith"  # a space on purpose: the table must stay parseable


def table(out: str) -> dict[str, list[str]]:
    """Parse `speakers list` the documented way: split on tabs, strip each cell."""
    header, *lines = out.splitlines()
    assert [c.strip() for c in header.split("\t")] == COLUMNS
    rows = {}
    for line in lines:
        cells = [c.strip() for c in line.split("\t")]
        assert len(cells) == len(COLUMNS), line
        rows[cells[0]] = cells
    return rows


def wav_frames(path: Path) -> int:
    """Frames of a finished 24 kHz 16-bit mono WAV (sizes in the header patched)."""
    with wave.open(str(path)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
        frames = wav.getnframes()
        assert frames > 0 and len(wav.readframes(frames)) == 2 * frames
    assert path.stat().st_size == 44 + 2 * frames
    return frames


@pytest.mark.slow  # a whole stack and several CLI processes: about 10 s
async def test_add_list_synth_export_rm_import(tiny_model_dir, tmp_path):
    prompt = str(tiny_model_dir / "prompt_sample.wav")
    transcript = (tiny_model_dir / "prompt_sample.txt").read_text().strip()
    official, only_alice = tmp_path / "official.pt", tmp_path / "async.pt"
    async with running_stack(tiny_model_dir) as stack:
        at = ("--address", stack.address)
        add = ("speakers", "add", NAME, "--prompt-audio", prompt, "--prompt-text", transcript, *at)
        out = assert_ok(await cosyvoice(*add))
        assert out.startswith(f"registered {NAME}: ")
        assert_error(
            await cosyvoice(*add),
            f"cosyvoice speakers: ALREADY_EXISTS: name: speaker {NAME!r} already exists (set --overwrite to replace it)",
        )
        assert assert_ok(await cosyvoice(*add, "--overwrite")).startswith(f"registered {NAME}: ")
        raw = "It costs 5 dollars."
        assert_ok(await cosyvoice("speakers", "add", "bob", "--prompt-audio", prompt, "--prompt-text", raw,
                                  "--no-text-frontend", "--overwrite", *at))

        rows = table(assert_ok(await cosyvoice("speakers", "list", *at)))
        assert list(rows) == ["alice smith", "bob", "default"]  # name order, presets included
        name, kind, tokens, seconds, text = rows[NAME]
        assert (kind, text) == ("registered", transcript) and int(tokens) > 0
        assert float(seconds) == pytest.approx(int(tokens) / 25, abs=0.005)
        assert rows["bob"][1:] == ["registered", tokens, seconds, raw]  # stored as given
        assert rows["default"] == ["default", "preset", "0", "0.00", ""]

        out = assert_ok(await cosyvoice("synth", "Hello there.", "-o", str(tmp_path / "a.wav"),
                                        "--speaker", NAME, "--seed", "1", *at))
        assert out.startswith(f"wrote {tmp_path / 'a.wav'}: ")
        wav_frames(tmp_path / "a.wav")

        assert_ok(await cosyvoice("speakers", "export", str(official), *at))
        assert_ok(await cosyvoice("speakers", "export", str(only_alice), "--schema", "async", "--name", NAME, *at))
        assert official.stat().st_size > 0 and only_alice.stat().st_size > 0
        unwritable = tmp_path / "no-such-dir" / "x.pt"
        assert_error(await cosyvoice("speakers", "export", str(unwritable), *at),
                     f"cosyvoice speakers: cannot write {str(unwritable)!r}: No such file or directory")
        assert_error(await cosyvoice("speakers", "export", str(tmp_path / "y.pt"), "--name", "carol", *at),
                     "cosyvoice speakers: NOT_FOUND: names: 'carol' is not a registered speaker")
        assert not (tmp_path / "y.pt").exists()

        assert assert_ok(await cosyvoice("speakers", "rm", NAME, *at)) == f"removed {NAME}\n"
        assert NAME not in table(assert_ok(await cosyvoice("speakers", "list", *at)))
        assert_error(await cosyvoice("speakers", "rm", NAME, *at),
                     f"cosyvoice speakers: NOT_FOUND: name: {NAME!r} is not a registered speaker")
        assert_error(await cosyvoice("speakers", "rm", "default", *at),
                     "cosyvoice speakers: FAILED_PRECONDITION: name: 'default' is a preset speaker of the model; "
                     "presets are read-only")

        # The official file holds bob too, who is still registered: all or nothing.
        assert_error(await cosyvoice("speakers", "import", str(official), *at),
                     "cosyvoice speakers: ALREADY_EXISTS: spk2info: speakers ['bob'] already exist "
                     "(set --overwrite to replace them, or --skip-existing to import the others)")
        assert NAME not in table(assert_ok(await cosyvoice("speakers", "list", *at)))
        skipping = assert_ok(await cosyvoice("speakers", "import", str(official), "--skip-existing", *at))
        assert "skipped bob (the name is taken)" in skipping and f"registered {NAME}" in skipping
        assert_ok(await cosyvoice("speakers", "rm", NAME, *at))
        out = assert_ok(await cosyvoice("speakers", "import", str(official), "--overwrite", *at))
        assert out.splitlines() == [f"registered {NAME}", "registered bob"]
        assert table(assert_ok(await cosyvoice("speakers", "list", *at)))[NAME] == rows[NAME]
        out = assert_ok(await cosyvoice("speakers", "import", str(only_alice), "--overwrite", *at))
        assert out.splitlines() == [f"registered {NAME}"]

        garbage = tmp_path / "garbage.pt"
        garbage.write_bytes(b"not a spk2info file")
        run = await cosyvoice("speakers", "import", str(garbage), *at)
        assert run.code == 1 and len(run.err.splitlines()) == 1, run
        assert run.err.startswith("cosyvoice speakers: INVALID_ARGUMENT: spk2info"), run.err
        assert_error(await cosyvoice("speakers", "add", "a/b", "--prompt-audio", prompt, "--prompt-text", "Hi.", *at),
                     "cosyvoice speakers: INVALID_ARGUMENT: name: 'a/b' contains '/'")


async def test_errors_before_any_gateway_call(tmp_path):
    # Port 1 refuses connections; the file errors come before any call is made.
    nowhere = ("--address", "127.0.0.1:1")
    missing = str(tmp_path / "missing.wav")
    runs = await asyncio.gather(
        cosyvoice("speakers", "list", *nowhere),
        cosyvoice("speakers", "add", "x", "--prompt-audio", missing, "--prompt-text", "Hi.", *nowhere),
        cosyvoice("speakers", "import", str(tmp_path / "missing.pt"), *nowhere),
        cosyvoice("speakers", "import", str(tmp_path), *nowhere),
        cosyvoice("speakers"),
        cosyvoice("speakers", "add", "x", "--prompt-text", "Hi."),
        cosyvoice("speakers", "export", "x.pt", "--schema", "nope"),
    )
    assert_error(runs[0], "cosyvoice speakers: UNAVAILABLE: cannot reach the gateway at 127.0.0.1:1")
    assert_error(runs[1], f"cosyvoice speakers: cannot read prompt audio {missing!r}: No such file or directory")
    assert_error(runs[2], f"cosyvoice speakers: cannot read speaker file {str(tmp_path / 'missing.pt')!r}: "
                          "No such file or directory")
    assert_error(runs[3], f"cosyvoice speakers: cannot read speaker file {str(tmp_path)!r}: Is a directory")
    for usage in runs[4:]:  # argparse's usage errors: exit 2, usage on stderr
        assert usage.code == 2 and "usage: cosyvoice speakers" in usage.err and "Traceback" not in usage.err
