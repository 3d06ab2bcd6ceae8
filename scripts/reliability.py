#!/usr/bin/env python3
"""Reliability figures of a live stack on this machine: the numbers docs/reliability.md records.

    python scripts/reliability.py [--only kill|failover|drain|overload] [--model-dir DIR] [--json OUT.json]

kill      SIGKILL each stage under `cosyvoice up` while text streams are in flight in it: how soon
          in-flight and new clients hear UNAVAILABLE, the gateway says NOT_SERVING, up restarts the
          stage, the gateway says SERVING and synthesises again (without restarting itself).
failover  two flow replicas behind one gateway; SIGKILL the busier one: which streams fail, how
          soon new work succeeds, whether anything hangs.
drain     SIGTERM to `up --drain-timeout D`: NOT_SERVING, new calls refused, in-flight streams
          finish and up exits 0; a second run never lets its streams finish: cut at D, exit 3.
overload  the gateway's max_concurrent_requests small, 3x as many concurrent requests.

Every wait has a deadline; everything started is stopped on exit, Ctrl-C and SIGTERM included.
Progress goes to stderr, the report to stdout. Exit code 1 when a scenario failed or one of its
expectations did not hold (each is listed in the report).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reliability_stack import (  # noqa: E402
    IN_FLIGHT, NOT_SERVING, SERVING, Background, Failure, HealthWatch, HeldStream, Service, Up, await_serving,
    checks_of, close_all, first_success, fmt, fmt_spread, free_port_on, gauge, ms, outcomes, spread, stop_everything,
    stop_process, synthesize, wait_streams, wait_until,
)

SCENARIOS = ("kill", "failover", "drain", "overload")
STAGES = ("llm", "flow", "vocoder", "frontend")
# Where "in flight in that stage" shows. A text stream holds no open frontend call (only a short
# CountTokens per text piece), so for the frontend: the gateway's gauge.
STAGE_GAUGES = {"llm": ("llm", "cosyvoice_llm_streams_active"), "flow": ("flow", "cosyvoice_flow_sessions_active"),
                "vocoder": ("vocoder", "cosyvoice_vocoder_streams_active"), "frontend": ("gateway", IN_FLIGHT)}
SESSIONS = "cosyvoice_flow_sessions_active"
# Enough text for the LLM (15 speech tokens per 5 text tokens) to pass the flow's first chunk
# (25 + 3 look-ahead tokens): a held stream then has a call open in llm, flow and vocoder.
LONG = ("Hello there, this is the first piece of a long text", " and here it ends.")
SHORT = ("Hello there.", " Bye.")  # in flight at the gateway; quick to finish once released
STREAM_DEADLINE = 300.0
FLOW_HOSTS = ("127.0.0.2", "127.0.0.3")  # two loopback addresses, as two hosts would be


def progress(message: str) -> None:
    print(f"[reliability {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def kill_stage(up: Up, health: HealthWatch, stage: str, k: int) -> dict[str, Any]:
    text = SHORT if stage == "frontend" else LONG  # the frontend holds nothing of a stream: no need to go deep
    streams = [HeldStream(up.gateway, *text, seed=i, deadline=STREAM_DEADLINE) for i in range(k)]
    try:
        service, metric = STAGE_GAUGES[stage]
        wait_until(lambda: up.gauge(service, metric) >= k, 120, f"{k} streams in flight in {stage} ({metric})")
        victim = up.pid_of(stage)
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        new = Background(lambda: synthesize(up.gateway, 60))  # sent at once: the stage is surely down
        # The frontend counts each text piece: half the streams send theirs during the outage.
        early = streams[: k // 2] if stage == "frontend" else []
        for stream in early:
            stream.release.set()
        not_serving = health.first(NOT_SERVING, killed, 60, f"the gateway's NOT_SERVING after the {stage} kill")
        # Surely still down: up waits at least 1 s before restarting it. This one meets a gateway
        # that knows; the one above most likely met a connection not yet seen to be reset.
        sent = time.monotonic()
        down_code, down_details, down_at = synthesize(up.gateway, 30)
        restarted, line = up.stderr.first(lambda said: f"cosyvoice up: {stage} restarted on" in said, killed, 120,
                                          f"up's `{stage} restarted` line")
        serving = health.first(SERVING, not_serving, 180, f"the gateway's SERVING after the {stage} restart")
        recovered, retries = first_success(up.gateway, serving, 120)
        new_code, new_details, new_at = new.get(60, "the request sent right after the kill")
        released = time.monotonic()  # streams the kill did not end are let finish now
        for stream in streams:
            stream.release.set()
        wait_streams(streams, STREAM_DEADLINE + 30, f"the streams after the {stage} restart")
    finally:
        close_all(streams)
    failed = [s for s in streams if s.ended is not None and s.ended < released and s.code != "OK"]
    rest = [s for s in streams if s not in failed]
    named = f"{stage} stage"
    # A held stream has calls open in llm, flow and vocoder; the frontend it needs once per piece.
    expected, which = ((set(early), "the streams that sent a piece during the outage failed, no other")
                       if stage == "frontend" else (set(streams), "every in-flight stream failed"))
    return {
        "pid_killed": victim, "pid_after": up.pid_of(stage), "in_flight": k, "in_flight_failed": len(failed),
        "sent_a_piece_during_outage": len(early),
        "in_flight_errors": outcomes(failed), "kill_to_in_flight_error": spread([ms(killed, s.ended) for s in failed]),
        "others_after_release": outcomes(rest),
        "new_request": {"code": new_code, "details": new_details, "kill_to_answer_ms": ms(killed, new_at)},
        "request_at_not_serving": {"code": down_code, "details": down_details, "kill_to_sent_ms": ms(killed, sent),
                                   "answer_ms": ms(sent, down_at)},
        "kill_to_not_serving_ms": ms(killed, not_serving), "kill_to_restarted_line_ms": ms(killed, restarted),
        "restarted_line": line.strip(), "kill_to_serving_ms": ms(killed, serving),
        "kill_to_first_synthesis_ok_ms": ms(killed, recovered), "failed_attempts_after_serving": retries,
        "checks": {
            which: set(failed) == expected,
            f"in-flight errors are UNAVAILABLE naming the {named}":
                all(s.code == "UNAVAILABLE" and named in s.details for s in failed),
            "streams the kill did not end finished OK": all(s.code == "OK" for s in rest),
            f"a new request while {stage} is down: UNAVAILABLE naming the {named}":
                new_code == "UNAVAILABLE" and named in new_details,
            "and one sent once NOT_SERVING": down_code == "UNAVAILABLE" and named in down_details,
            "the first synthesis after SERVING succeeded": not retries,
        },
    }


def scenario_kill(args: argparse.Namespace) -> dict[str, Any]:
    up = Up.start(args.model_dir)
    health = HealthWatch(up.gateway)
    try:
        health.first(SERVING, 0.0, 60, "the gateway's first SERVING")
        gateway_pid = up.pid_of("gateway")
        stages: dict[str, Any] = {}
        for stage in STAGES:
            progress(f"kill: {stage}")
            try:
                stages[stage] = kill_stage(up, health, stage, args.streams)
            except Failure as exc:
                stages[stage] = {"error": str(exc)}
        after = up.pid_of("gateway")
        return {"streams": args.streams, "gateway_pid_before": gateway_pid, "gateway_pid_after": after,
                "stages": stages, "checks": {"the gateway never restarted (same pid)": after == gateway_pid}}
    finally:
        health.close()
        up.stop()


def scenario_failover(args: argparse.Namespace) -> dict[str, Any]:
    common = ["--model-dir", str(args.model_dir), "--metrics-port", "0", "--num-threads", "1"]
    services: list[Service] = []
    streams: list[HeldStream] = []
    health: HealthWatch | None = None
    try:
        services += [Service.start(name, ["--port", "0", *common]) for name in ("llm", "vocoder", "frontend")]
        port = free_port_on(*FLOW_HOSTS)
        flows = [Service.start("flow", ["--host", host, "--port", str(port), *common]) for host in FLOW_HOSTS]
        services += flows
        for flow in flows:  # a replica listens before it has warmed up; the gateway skips it until SERVING
            await_serving(flow.address, 300, f"the flow replica at {flow.address} SERVING")
        at = {s.name: s.address for s in services}
        gateway = Service.start("gateway", [
            "--port", "0", "--metrics-port", "0", "--speaker-db", ":memory:", "--llm-addr", at["llm"],
            "--vocoder-addr", at["vocoder"], "--frontend-addr", at["frontend"],
            "--flow-addr", ",".join(f.address for f in flows)])
        services.insert(0, gateway)  # stopped first: it drains through the stages
        health = HealthWatch(gateway.address)
        health.first(SERVING, 0.0, 300, "the gateway's first SERVING")
        n = args.failover_streams
        streams = [HeldStream(gateway.address, *LONG, seed=i, deadline=STREAM_DEADLINE) for i in range(n)]
        wait_until(lambda: sum(gauge(f.metrics, SESSIONS) for f in flows) >= n, 120,
                   f"{n} streams in flight in the two flow replicas")
        sessions = [int(gauge(f.metrics, SESSIONS)) for f in flows]
        victim = max(range(len(flows)), key=lambda i: sessions[i])
        killed = time.monotonic()
        flows[victim].process.kill()
        recovered, retries = first_success(gateway.address, killed, 120)
        for stream in streams:
            stream.release.set()
        wait_streams(streams, STREAM_DEADLINE + 30, "the streams after the failover")
        failed = [s for s in streams if s.code != "OK"]
        hung = [s for s in streams if s.code == "DEADLINE_EXCEEDED"]
        dipped = [v for t, v in list(health.timeline.events) if t >= killed and v == NOT_SERVING]
        return {
            "streams": n, "sessions_per_replica": dict(zip(FLOW_HOSTS, sessions)), "killed": FLOW_HOSTS[victim],
            "killed_replica_sessions": sessions[victim], "streams_failed": len(failed), "failures": outcomes(failed),
            "kill_to_stream_error": spread([ms(killed, s.ended) for s in failed]), "hung_past_deadline": len(hung),
            "kill_to_first_new_request_ok_ms": ms(killed, recovered), "failed_new_requests_before": retries,
            "gateway_went_not_serving": bool(dipped),
            "checks": {
                # A stream whose flow call had had no reply yet is retried on the survivor
                # (gateway/clients.py); one that had replies fails. None on the survivor fails.
                "streams failed <= sessions the killed replica held": len(failed) <= sessions[victim],
                "every stream that did not fail finished OK": all(s.code in ("OK",) for s in streams if s not in failed),
                "a new request sent at once succeeded at the first try": not retries,
                "failures are UNAVAILABLE naming the flow stage":
                    all(s.code == "UNAVAILABLE" and "flow stage" in s.details for s in failed),
                "no call hung past its deadline": not hung,
                "the gateway stayed SERVING": not dipped and gateway.process.poll() is None,
            },
        }
    finally:
        close_all(streams)
        if health is not None:
            health.close()
        for service in services:
            stop_process(service.process, 30.0)


def drain_run(model_dir: Path, k: int, drain_timeout: float, release: bool) -> dict[str, Any]:
    up = Up.start(model_dir, ["--drain-timeout", f"{drain_timeout:g}"])
    health = HealthWatch(up.gateway)
    streams: list[HeldStream] = []
    try:
        health.first(SERVING, 0.0, 60, "the gateway's first SERVING")
        streams = [HeldStream(up.gateway, *SHORT, seed=i, deadline=STREAM_DEADLINE) for i in range(k)]
        wait_until(lambda: up.gauge("gateway", IN_FLIGHT) >= k, 60, f"{k} streams in flight at the gateway")
        term = time.monotonic()
        up.process.send_signal(signal.SIGTERM)
        not_serving = health.first(NOT_SERVING, term, 30, "the gateway's NOT_SERVING after SIGTERM")
        code, details, refused_at = synthesize(up.gateway, 30)
        if release:
            for stream in streams:
                stream.release.set()
        wait_streams(streams, drain_timeout + 60, "the in-flight streams after SIGTERM")
        exit_code = up.wait(drain_timeout + 90, "up's exit after SIGTERM")
    finally:
        close_all(streams)
        health.close()
        up.stop()
    ended = [ms(term, s.ended) for s in streams if s.ended is not None]
    result: dict[str, Any] = {
        "drain_timeout_s": drain_timeout, "streams": k, "released": release,
        "sigterm_to_not_serving_ms": ms(term, not_serving),
        "new_request": {"code": code, "details": details, "sigterm_to_answer_ms": ms(term, refused_at)},
        "stream_outcomes": outcomes(streams), "sigterm_to_stream_end": spread(ended), "up_exit_code": exit_code,
        "up_stderr": [line.strip() for _, line in up.stderr.events if "cut streams" in line],
    }
    refused = code == "UNAVAILABLE" and details == "gateway: shutting down (draining); retry on another replica"
    if release:
        result["checks"] = {
            "a new request is refused UNAVAILABLE (draining)": refused,
            "every in-flight stream finished OK": all(s.code == "OK" for s in streams),
            "within the drain timeout": all(t < drain_timeout * 1000 for t in ended),
            "up exited 0": exit_code == 0,
        }
    else:
        cut = f"gateway: shutting down; the stream was cut at the {drain_timeout:g} s drain timeout (grace_seconds)"
        result["checks"] = {
            "a new request is refused UNAVAILABLE (draining)": refused,
            "every stream was cut UNAVAILABLE naming the drain timeout":
                all(s.code == "UNAVAILABLE" and s.details == cut for s in streams),
            "cut at the drain timeout (D <= t < D + 5 s)":
                all(drain_timeout * 1000 <= t < (drain_timeout + 5) * 1000 for t in ended),
            "up exited 3": exit_code == 3,
        }
    return result


def scenario_drain(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    for name, timeout, release in (("released", args.drain_timeout, True), ("never_released", args.cut_timeout, False)):
        progress(f"drain: {name} (--drain-timeout {timeout:g})")
        try:
            runs[name] = drain_run(args.model_dir, args.drain_streams, timeout, release)
        except Failure as exc:
            runs[name] = {"error": str(exc)}
    return runs


def scenario_overload(args: argparse.Namespace) -> dict[str, Any]:
    limit = args.max_concurrent
    total = 3 * limit
    # `up` forwards no --max-concurrent-requests; the gateway child inherits up's environment.
    up = Up.start(args.model_dir, env=dict(os.environ, COSYVOICE_GATEWAY_MAX_CONCURRENT_REQUESTS=str(limit)))
    streams: list[HeldStream] = []
    try:
        # Held text streams: the admitted ones stay in flight, so exactly `limit` are admitted.
        streams = [HeldStream(up.gateway, *SHORT, seed=i, deadline=STREAM_DEADLINE) for i in range(total)]
        wait_until(lambda: sum(s.ended is not None for s in streams) + up.gauge("gateway", IN_FLIGHT) >= total, 60,
                   "every request either rejected or in flight")
        peak = up.gauge("gateway", IN_FLIGHT)
        rejected = [s for s in streams if s.ended is not None]
        admitted = [s for s in streams if s not in rejected]
        released = time.monotonic()
        for stream in admitted:
            stream.release.set()
        wait_streams(admitted, STREAM_DEADLINE + 30, "the admitted requests")
    finally:
        close_all(streams)
        up.stop()
    return {
        "max_concurrent_requests": limit, "requests": total, "in_flight_at_peak": peak,
        "rejected": outcomes(rejected), "rejection_latency": spread([ms(s.started, s.ended) for s in rejected]),
        "admitted": outcomes(admitted), "admitted_release_to_end": spread([ms(released, s.ended) for s in admitted]),
        "checks": {
            f"{total - limit} rejected RESOURCE_EXHAUSTED": len(rejected) == total - limit
            and all(s.code == "RESOURCE_EXHAUSTED" for s in rejected),
            f"the {limit} admitted completed OK": len(admitted) == limit and all(s.code == "OK" for s in admitted),
        },
    }


RUNNERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "kill": scenario_kill, "failover": scenario_failover, "drain": scenario_drain, "overload": scenario_overload}


def report(results: dict[str, Any]) -> str:
    lines = [f"command: {results['command']}", f"started {results['started_utc']}, wall time "
             f"{results['wall_seconds']:.0f} s; {results['machine']}", f"model: {results['model_dir']}",
             "times: from the signal to when a client thread of this script saw the event; a synthesis time "
             "includes the whole synthesis", ""]
    if results.get("interrupted"):
        lines += ["INTERRUPTED: a partial report (the scenario under way left no figures)", ""]
    kill = results["scenarios"].get("kill")
    if kill and "stages" in kill:
        lines.append(f"kill: SIGKILL each stage under `cosyvoice up`, {kill['streams']} text streams in flight in it; "
                     f"gateway pid {kill['gateway_pid_before']} before, {kill['gateway_pid_after']} after")
        for stage, r in kill["stages"].items():
            if "error" in r:
                lines.append(f"  {stage}: FAILED: {r['error']}")
                continue
            down = r["request_at_not_serving"]
            early = f" ({r['sent_a_piece_during_outage']} sent a text piece right after the kill)" \
                if r["sent_a_piece_during_outage"] else ""
            lines += [f"  {stage} (pid {r['pid_killed']} killed, restarted as {r['pid_after']})",
                      f"    in flight{early}: {r['in_flight_failed']}/{r['in_flight']} failed, kill -> error "
                      f"{fmt_spread(r['kill_to_in_flight_error'])}: {r['in_flight_errors']}",
                      f"    the others, released after recovery: {r['others_after_release'] or '-'}",
                      f"    new request right after the kill: {r['new_request']['code']} after "
                      f"{fmt(r['new_request']['kill_to_answer_ms'])}: {r['new_request']['details']!r}",
                      f"    new request once NOT_SERVING ({fmt(down['kill_to_sent_ms'])} after the kill): "
                      f"{down['code']} in {fmt(down['answer_ms'])}: {down['details']!r}",
                      f"    kill -> NOT_SERVING {fmt(r['kill_to_not_serving_ms'])}, -> `restarted` line "
                      f"{fmt(r['kill_to_restarted_line_ms'])}, -> SERVING {fmt(r['kill_to_serving_ms'])}, -> "
                      f"a synthesis sent at SERVING done OK {fmt(r['kill_to_first_synthesis_ok_ms'])} "
                      f"({len(r['failed_attempts_after_serving'])} failed attempts)"]
    failover = results["scenarios"].get("failover")
    if failover and "streams" in failover:
        f = failover
        lines += [f"failover: flow replicas on {' and '.join(FLOW_HOSTS)}, {f['streams']} text streams, sessions "
                  f"{f['sessions_per_replica']}; SIGKILL {f['killed']} ({f['killed_replica_sessions']} sessions)",
                  f"  streams failed: {f['streams_failed']}, kill -> error {fmt_spread(f['kill_to_stream_error'])}: "
                  f"{f['failures']}",
                  f"  kill -> a new request sent at once done OK {fmt(f['kill_to_first_new_request_ok_ms'])} "
                  f"({len(f['failed_new_requests_before'])} failed before it: {f['failed_new_requests_before']}); "
                  f"hung past deadline: {f['hung_past_deadline']}; gateway went NOT_SERVING: "
                  f"{f['gateway_went_not_serving']}"]
    for name, r in (results["scenarios"].get("drain") or {}).items():
        if not isinstance(r, dict) or "streams" not in r:
            continue
        lines += [f"drain ({name}): up --drain-timeout {r['drain_timeout_s']:g}, {r['streams']} streams in flight, "
                  f"SIGTERM to up",
                  f"  SIGTERM -> NOT_SERVING {fmt(r['sigterm_to_not_serving_ms'])}; new request: "
                  f"{r['new_request']['code']} {r['new_request']['details']!r} "
                  f"({fmt(r['new_request']['sigterm_to_answer_ms'])} after SIGTERM)",
                  f"  streams: {r['stream_outcomes']}, SIGTERM -> end {fmt_spread(r['sigterm_to_stream_end'])}",
                  f"  up exit code {r['up_exit_code']}" + "".join(f"; up said: {line}" for line in r["up_stderr"])]
    overload = results["scenarios"].get("overload")
    if overload and "requests" in overload:
        o = overload
        lines += [f"overload: max_concurrent_requests {o['max_concurrent_requests']}, {o['requests']} concurrent "
                  f"text streams (in flight at peak: {o['in_flight_at_peak']:g})",
                  f"  rejected: {o['rejected']}, call -> rejection {fmt_spread(o['rejection_latency'])}",
                  f"  admitted: {o['admitted']}, release -> end {fmt_spread(o['admitted_release_to_end'])}"]
    lines.append("")
    for name, result in results["scenarios"].items():
        for what, ok in checks_of(result):
            lines.append(f"{'ok  ' if ok else 'FAIL'} {name}: {what}")
    return "\n".join(lines)


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="run this scenario (repeatable)")
    parser.add_argument("--model-dir", type=Path, help="default: the tiny random-weight model `cosyvoice up` uses")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--streams", type=int, default=4, help="kill: streams in flight per stage (default 4)")
    parser.add_argument("--failover-streams", type=int, default=8, help="failover: streams in flight (default 8)")
    parser.add_argument("--drain-streams", type=int, default=2, help="drain: streams in flight (default 2)")
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="drain: D of the released run (default 60)")
    parser.add_argument("--cut-timeout", type=float, default=2.0, help="drain: D of the never-released run (default 2)")
    parser.add_argument("--max-concurrent", type=int, default=4, help="overload: the gateway's limit (default 4)")
    args = parser.parse_args(argv)
    if args.model_dir is None:
        from services.cli.up import ensure_model_dir

        args.model_dir = ensure_model_dir(None)
    signal.signal(signal.SIGTERM, _terminated)
    started = time.monotonic()
    results: dict[str, Any] = {
        "command": shlex.join([sys.executable, sys.argv[0], *argv]),
        "started_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start",
        "model_dir": str(args.model_dir), "scenarios": {}}
    interrupted = False
    try:
        for name in args.only or SCENARIOS:
            progress(f"{name}: starting")
            begun = time.monotonic()
            try:
                results["scenarios"][name] = RUNNERS[name](args)
            except Failure as exc:
                results["scenarios"][name] = {"error": str(exc)}
            results["scenarios"][name]["seconds"] = round(time.monotonic() - begun, 1)
    except KeyboardInterrupt:
        interrupted = results["interrupted"] = True
        progress("interrupted: stopping every process this script started")
    finally:
        stop_everything()
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    print(report(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if interrupted:
        return 130
    return 0 if all(ok for r in results["scenarios"].values() for _, ok in checks_of(r)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
