#!/usr/bin/env python3
"""Soak: N concurrent synthesis streams for T minutes; errors by status code, time to first
audio, and the resident memory (RSS) of every process of the stack over time.

    python scripts/soak.py --duration 30 --streams 16 [--model-dir DIR] [--json soak.json]
    python scripts/soak.py --address HOST:PORT --up-pid PID ...       # a running `cosyvoice up`
    python scripts/soak.py --address HOST:PORT --pid gateway=PID --pid llm=PID ...

Without --address it starts `cosyvoice up --port 0 --metrics-port 0 --speaker-db :memory:`
(the tiny random-weight model unless --model-dir), logs its stderr to --stack-log, and stops
it at the end. Each stream sends one request after another, rotating over short and medium
texts and the voices: every preset speaker (sft) and, when there is a prompt recording (the
model directory's prompt_sample.wav on an own stack, or --prompt-audio/--prompt-text), a
speaker registered from it (zero_shot). Requests still running at the end finish before the
last idle sample (with --no-idle-check they are cancelled and counted as cut off, not as errors).

RSS comes from /proc/PID/statm every --sample-interval seconds (no psutil). After the warm-up
(--warmup minutes; default 10 % of the duration, at most 2; give one longer than a request
takes under this load) and at the end, the load pauses: no new request starts, those in flight
finish, and after --settle seconds every process's idle RSS is sampled; the pause after the
warm-up does not count toward --duration. Growth is judged idle to idle, because under load a
stage holds what its open streams need (the flow's incremental caches swing by hundreds of
MB), so RSS compares different loads. The floor growth under load (the lowest RSS of the last
fifth of the samples after the warm-up against that of the first fifth) is reported beside it,
and judged instead with --no-idle-check. Exit status 1 when a request failed, a process went
away, or a growth is above --max-growth percent. --json has every sample, for a plot.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.soak_report import Tally, format_report, summarize  # noqa: E402
from services.common.pb import speakers_pb2, speakers_pb2_grpc, tts_pb2, tts_pb2_grpc  # noqa: E402
from services.common.server import CHANNEL_OPTIONS  # noqa: E402

SERVICES = ("gateway", "llm", "flow", "vocoder", "frontend", "http")  # every process `up` starts
_UP_LINE = re.compile(r"^(gateway|llm|flow|vocoder|frontend|http) (\S+:\d+) \(metrics \S+\)")
TEXTS = [
    "Hi there.",
    "Good morning, how are you?",
    "The weather today is mild, with a light breeze from the west and some sun later on.",
    "Thank you.",
    "Please leave a message after the tone, and we will call you back as soon as we can.",
]
SOAK_SPEAKER = "soak-voice"
REQUEST_TIMEOUT_SECONDS = 600.0
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int) -> int | None:
    """Resident set size of `pid`, or None once it has gone away."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


def services_under(parent: int) -> dict[str, int]:
    """The services among `parent`'s children, by the `serve NAME` in their command lines.
    `up` starts each through a launcher that execs the service, so they are direct children."""
    found: dict[str, int] = {}
    for children in Path(f"/proc/{parent}/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in argv[:-1]:
                found[argv[argv.index(b"serve") + 1].decode()] = int(pid)
    return found


class OwnStack:
    """`cosyvoice up` on free ports with an in-memory speaker registry."""

    def __init__(self, model_dir: Path | None, log_path: Path) -> None:
        command = [sys.executable, "-m", "services.cli.main", "up", "--port", "0", "--metrics-port", "0",
                   "--speaker-db", ":memory:", *(["--model-dir", str(model_dir)] if model_dir else [])]
        self.log_path = log_path
        with open(log_path, "w") as log:  # the child holds its own descriptor
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
        addresses: dict[str, str] = {}
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if match := _UP_LINE.match(line):
                addresses[match.group(1)] = match.group(2)
            if line.startswith("ready"):
                break
        else:
            raise SystemExit(f"soak: cosyvoice up exited before it was ready (code {self.process.wait()}); "
                             f"see {log_path}")
        stdout = self.process.stdout  # keep reading, so `up` never blocks on a full pipe
        threading.Thread(target=lambda: [None for _ in stdout], daemon=True).start()
        self.address = addresses["gateway"]
        self.pids = services_under(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def voices(channel: grpc.Channel, prompt: tuple[bytes, str] | None) -> list[tuple[int, str]]:
    """(mode, speaker) pairs: every preset, and a speaker registered from `prompt`."""
    stub = speakers_pb2_grpc.SpeakersStub(channel)
    listed = stub.ListSpeakers(speakers_pb2.ListSpeakersRequest(), timeout=60)
    found = [(tts_pb2.SYNTHESIS_MODE_SFT, s.name) for s in listed.speakers if s.preset]
    if prompt is not None:
        audio, text = prompt
        stub.RegisterSpeaker(speakers_pb2.RegisterSpeakerRequest(
            name=SOAK_SPEAKER, prompt=tts_pb2.PromptAudio(audio=audio, text=text)), timeout=120)
        found.append((tts_pb2.SYNTHESIS_MODE_ZERO_SHOT, SOAK_SPEAKER))
    if not found:
        raise SystemExit("soak: the model has no preset speakers; give --prompt-audio and --prompt-text")
    return found


class Load:
    """`streams` threads on one channel, each sending its next request when one ends."""

    def __init__(self, channel: grpc.Channel, streams: int, voice_list: list[tuple[int, str]], tally: Tally,
                 timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self.stub = tts_pb2_grpc.TextToSpeechStub(channel)
        self.timeout = timeout
        self.voices, self.tally = voice_list, tally
        self.stopping = threading.Event()
        self.going = threading.Event()  # cleared by `pause`: no stream starts a request
        self.going.set()
        self.calls: list[grpc.Future | None] = [None] * streams
        self.lock = threading.Lock()  # between a stream storing its call and `stop` cancelling it
        self.quiet = threading.Condition(self.lock)  # notified when a request ends
        self.in_flight = 0
        self.threads = [threading.Thread(target=self._stream, args=(i,), daemon=True) for i in range(streams)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _request(self, n: int) -> tts_pb2.SynthesizeRequest:
        mode, speaker = self.voices[n % len(self.voices)]
        text = TEXTS[(n // len(self.voices)) % len(TEXTS)]
        return tts_pb2.SynthesizeRequest(text=text, speaker_id=speaker, mode=mode, stream=True,
                                          encoding=tts_pb2.AUDIO_ENCODING_PCM_S16LE)

    def _stream(self, index: int) -> None:
        n = index  # streams start at different places in the rotation
        while True:
            request = self._request(n)
            self.going.wait()
            with self.lock:
                if self.stopping.is_set():
                    return
                if not self.going.is_set():  # paused between the wait and the lock
                    continue
                call = self.stub.Synthesize(request, timeout=self.timeout)
                self.calls[index] = call
                self.in_flight += 1
            n += len(self.threads)
            started, first, audio_seconds = time.perf_counter(), None, 0.0
            try:
                for response in call:
                    if first is None and response.audio:
                        first = time.perf_counter() - started
                    audio_seconds += len(response.audio) / 2 / max(response.sample_rate, 1)
                self.tally.succeeded(first, audio_seconds)
            except grpc.RpcError as error:
                if self.stopping.is_set() and error.code() == grpc.StatusCode.CANCELLED:
                    self.tally.cut_off()
                else:
                    self.tally.failed(error.code().name, error.details() or "")
            except Exception as error:  # a client-side bug must show in the report, not kill the stream
                self.tally.failed("CLIENT_EXCEPTION", repr(error))
            finally:
                with self.lock:
                    self.in_flight -= 1
                    self.quiet.notify_all()

    def pause(self, timeout: float) -> bool:
        """Start no new request and wait for those in flight to end; False if some still run."""
        self.going.clear()
        with self.lock:
            return self.quiet.wait_for(lambda: self.in_flight == 0, timeout)

    def resume(self) -> None:
        self.going.set()

    def stop(self) -> None:
        with self.lock:  # no stream starts a request after this
            self.stopping.set()
            self.going.set()  # wake paused streams, which then see `stopping`
            for call in self.calls:
                if call is not None:
                    call.cancel()
        for thread in self.threads:
            thread.join()


def sample_until(deadline: float, started: float, interval: float, pids: dict[str, int],
                 samples: list[dict], tally: Tally, report_every: float) -> None:
    """One RSS sample per interval (the last at the deadline), and a progress line every
    `report_every` seconds. Ctrl-C ends the soak early, with the report of what ran."""
    # The next whole multiple of report_every from the start (a pause may have come before).
    next_report = started + report_every * (math.floor((time.monotonic() - started) / report_every) + 1)
    while True:
        now = time.monotonic()
        samples.append({"t": round(now - started, 3), "rss": {name: rss_bytes(pid) for name, pid in pids.items()}})
        if now >= next_report:
            rss = " ".join(f"{name} {(b or 0) / 1e6:.0f}" for name, b in samples[-1]["rss"].items())
            print(f"[{(now - started) / 60:5.1f} min] {tally.progress()}; RSS MB: {rss}", flush=True)
            next_report += report_every
        if now >= deadline:
            return
        try:
            time.sleep(min(interval, deadline - now))  # the sampling interval is the measurement
        except KeyboardInterrupt:
            print("soak: interrupted; stopping the load", file=sys.stderr, flush=True)
            deadline = now  # one last sample, then the report


def idle_rss(load: Load, pids: dict[str, int], settle: float, timeout: float, when: str) -> dict[str, int | None]:
    """Every process's RSS with no request in flight: pause the load, let what runs finish,
    wait `settle` seconds (the stages give freed memory back once idle), then the lowest of
    three samples a second apart. The same state after the warm-up and at the end, so what
    differs is what stayed behind, not how many streams happened to be open."""
    began = time.monotonic()
    if not load.pause(timeout):
        print(f"soak: requests still running {timeout:.0f} s after the load paused ({when})", file=sys.stderr)
    time.sleep(settle)  # the settling time is part of the measurement
    found: dict[str, int | None] = {}
    for index in range(3):
        for name, pid in pids.items():
            value = rss_bytes(pid)
            found[name] = value if index == 0 or found[name] is None or value is None else min(found[name], value)
        if index < 2:
            time.sleep(1.0)
    rss = " ".join(f"{name} {(b or 0) / 1e6:.0f}" for name, b in found.items())
    print(f"soak: idle RSS MB {when} (after {time.monotonic() - began:.0f} s): {rss}", flush=True)
    return found


def parse_pids(values: Sequence[str]) -> dict[str, int]:
    pids = {}
    for value in values:
        name, _, pid = value.partition("=")
        if name not in SERVICES or not pid.isdigit():
            raise SystemExit(f"soak: --pid {value!r}: expected NAME=PID with NAME one of {', '.join(SERVICES)}")
        pids[name] = int(pid)
    return pids


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=30.0, help="minutes of load (float; default 30)")
    p.add_argument("--streams", type=int, default=16, help="concurrent synthesis streams (default 16)")
    p.add_argument("--warmup", type=float, default=None, help="minutes before the growth baseline "
                   "(default 10 %% of --duration, at most 2)")
    p.add_argument("--max-growth", type=float, default=5.0, help="RSS growth after the warm-up that fails, in %% "
                   "(default 5): idle to idle, or of the floors under load with --no-idle-check")
    p.add_argument("--no-idle-check", dest="idle_check", action="store_false",
                   help="judge the RSS floors under load instead of pausing after the warm-up and at the end "
                        "to compare each process's RSS with no request in flight")
    p.add_argument("--settle", type=float, default=15.0, help="seconds to wait, paused, before an idle sample (default 15)")
    p.add_argument("--sample-interval", type=float, default=10.0, help="seconds between RSS samples (default 10)")
    p.add_argument("--report-every", type=float, default=1.0, help="minutes between progress lines (default 1)")
    p.add_argument("--model-dir", type=Path, help="for the stack this starts (default: the tiny model)")
    p.add_argument("--stack-log", type=Path, help="its stderr (default: a file in the temp directory)")
    p.add_argument("--address", help="a running gateway instead of starting a stack")
    p.add_argument("--up-pid", type=int, help="with --address: watch the services of this `cosyvoice up`")
    p.add_argument("--pid", action="append", default=[], metavar="NAME=PID", help="with --address: a process to watch")
    p.add_argument("--prompt-audio", type=Path, help="a recording to register a zero_shot speaker from")
    p.add_argument("--prompt-text", default="", help="its transcript")
    p.add_argument("--json", type=Path, help="write the result and every sample here")
    p.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT_SECONDS,
                   help="each request's deadline in seconds (default 600); on a box too slow for --streams, raise "
                        "it and the gateway's (COSYVOICE_GATEWAY_UPSTREAM_TIMEOUT_SECONDS) to measure leaks, not speed")
    args = p.parse_args(argv)
    if args.streams < 1 or args.duration <= 0 or args.sample_interval <= 0:
        raise SystemExit("soak: --streams, --duration and --sample-interval must be positive")
    warmup = args.warmup if args.warmup is not None else min(2.0, args.duration / 10)
    # SIGTERM (timeout, kill) ends the run like Ctrl-C, so the stack this started is stopped
    # by the finally blocks below instead of being left running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    stack = None
    if args.address:
        address, pids = args.address, {**(services_under(args.up_pid) if args.up_pid else {}), **parse_pids(args.pid)}
    else:
        log = args.stack_log or Path(tempfile.mkstemp(prefix="soak-stack-", suffix=".log")[1])
        print(f"soak: starting cosyvoice up (its log: {log})", flush=True)
        stack = OwnStack(args.model_dir, log)
        address, pids = stack.address, stack.pids
        if sorted(pids) != sorted(SERVICES):
            print(f"soak: found only {', '.join(pids) or 'no'} services under cosyvoice up", file=sys.stderr)
    pids = {name: pids[name] for name in SERVICES if name in pids}  # report in up's order, gateway first
    if not pids:
        print("soak: watching no process's memory (give --up-pid or --pid NAME=PID)", file=sys.stderr)
    prompt_file, prompt_text = args.prompt_audio, args.prompt_text
    if prompt_file is None and stack is not None:  # an own stack's registry is in memory: free to register in
        from services.cli.up import DEFAULT_TINY_DIR

        model_dir = args.model_dir or DEFAULT_TINY_DIR
        if (model_dir / "prompt_sample.wav").is_file():
            prompt_file = model_dir / "prompt_sample.wav"
            prompt_text = (model_dir / "prompt_sample.txt").read_text().strip()
    tally, samples, idle, floors_from = Tally(), [], {}, 0.0
    try:
        with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
            try:
                voice_list = voices(channel, (prompt_file.read_bytes(), prompt_text) if prompt_file else None)
            except grpc.RpcError as error:
                raise SystemExit(f"soak: setting up the voices at {address}: {error.code().name}: {error.details()}")
            print(f"soak: {args.streams} streams for {args.duration:g} min against {address}; voices "
                  f"{', '.join(name for _, name in voice_list)}; watching {', '.join(f'{n} {pid}' for n, pid in pids.items())}",
                  flush=True)
            load = Load(channel, args.streams, voice_list, tally, args.request_timeout)
            started = time.monotonic()
            load.start()
            try:
                if args.idle_check:
                    sample_until(started + warmup * 60, started, args.sample_interval, pids, samples, tally,
                                 args.report_every * 60)
                    idle["after_warmup"] = idle_rss(load, pids, args.settle, args.request_timeout, "after the warm-up")
                    paused = time.monotonic() - started - warmup * 60
                    load.resume()
                    end = started + args.duration * 60 + paused  # the pause is not load
                    # The floors under load start one sample after the load is back, not at idle.
                    floors_from = time.monotonic() - started + args.sample_interval
                else:
                    end = started + args.duration * 60
                    floors_from = warmup * 60
                sample_until(end, started, args.sample_interval, pids, samples, tally, args.report_every * 60)
                if args.idle_check:
                    idle["end"] = idle_rss(load, pids, args.settle, args.request_timeout, "at the end")
            finally:
                load.stop()
                if stack is None and prompt_file is not None:  # leave a running stack's registry as it was
                    speakers_pb2_grpc.SpeakersStub(channel).DeleteSpeaker(
                        speakers_pb2.DeleteSpeakerRequest(name=SOAK_SPEAKER), timeout=60)
    finally:
        if stack is not None:
            stack.stop()
    result = summarize(tally, samples, floors_from or warmup * 60, args.max_growth, idle if len(idle) == 2 else None)
    result["config"] = {"address": address, "streams": args.streams, "duration_minutes": args.duration,
                        "warmup_minutes": warmup, "max_growth_pct": args.max_growth, "pids": pids,
                        "idle_check": args.idle_check, "settle_seconds": args.settle,
                        "own_stack": stack is not None, "model_dir": str(args.model_dir or "")}
    print(format_report(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    raise SystemExit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
