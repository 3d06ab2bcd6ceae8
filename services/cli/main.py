"""`cosyvoice` — serve a stage, run the whole stack, synthesize, manage voices, benchmark,
make a tiny model.

Subcommands import their own modules lazily, so the clients (`synth`, `speakers`) never import torch.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

USAGE = """usage: cosyvoice <command> [options]

commands:
  serve {llm,flow,vocoder,frontend,gateway,http} [flags]
                                            run one service (flags or COSYVOICE_<SERVICE>_* env vars);
                                            http: the HTTP front (docs/http.md)
  up [--model-dir DIR] [--device cpu|cuda] [--port 50051] [--metrics-port 9400] [--metrics-host H]
     [--host H] [--internal-host H] [--tls-cert PEM --tls-key PEM] [--api-keys-file FILE]
     [--max-restarts 5] [--drain-timeout S] [--http-port 8080]
                                            run the whole stack locally as six processes
                                            (the HTTP front too), restarting any that dies;
                                            SIGTERM drains
  synth TEXT -o OUT.wav [--mode M] [--speaker ID | --prompt-audio FILE [--prompt-text TEXT]]
        [--instruct TEXT] [--speed X] [--no-text-frontend] [--seed N] [--address HOST:PORT]
                                            synthesize through a running gateway
  speakers add NAME --prompt-audio FILE --prompt-text TEXT [--overwrite] [--no-text-frontend]
                                            register a voice on a running gateway
  speakers list | rm NAME                   list the voices (presets too) / remove a registered one
  speakers import FILE [--overwrite]        register every voice of a spk2info.pt file
  speakers export FILE [--schema official|async] [--name NAME ...]
                                            write registered voices as a spk2info.pt file
                                            (every speakers command takes --address HOST:PORT)
                                            synth, speakers: --tls-ca PEM, --api-key KEY; health:
                                            --tls-ca PEM (docs/security.md)
  bench [options]                           load-test the gateway against the in-process monolith
  bench voices [options]                    registered speaker vs inline prompt: time to first audio
  bench stages [options]                    each model stage alone over gRPC: throughput per level
                                            (bench and bench stages: --backend A,B --dtype X,Y
                                            compare variants, --plot DIR writes PNG charts)
  make-tiny-model OUT_DIR [--seed N] [--no-presets] [--full-size] [--force]
                                            write a random-weight model in the official layout
  check-model DIR [--json]                  validate a model directory: files, shapes, dtypes,
                                            preset speakers, and what each mode still lacks
  download-model NAME DIR [--hub huggingface|modelscope] [--revision R] [--force]
                                            fetch an official model (e.g. CosyVoice2-0.5B) from a
                                            hub, then check it
  export {onnx,trt} --model-dir DIR [--out DIR] [--dtype float32|float16|bfloat16]
                                            write the flow estimator and HiFT as ONNX (checked
                                            against torch) or TensorRT engines (docs/backends.md)
  health [HOST:PORT] [--service NAME]       exit 0 if the service reports SERVING (the images'
                                            healthcheck)
  --version                                 print the version

`cosyvoice <command> --help` shows a command's options.
"""


def _serve(argv: Sequence[str]) -> None:
    services = ("llm", "flow", "vocoder", "frontend", "gateway", "http")
    if not argv or argv[0] in ("-h", "--help"):
        raise SystemExit("usage: cosyvoice serve {llm,flow,vocoder,frontend,gateway,http} [flags]  "
                         "(cosyvoice serve NAME --help lists the flags)")
    if argv[0] not in services:
        raise SystemExit(f"cosyvoice serve: unknown service {argv[0]!r} (one of {', '.join(services)})")
    stage, rest = argv[0], list(argv[1:])
    if stage == "gateway":
        from gateway.server import main as serve_main
    elif stage == "http":
        from services.http.server import main as serve_main
    elif stage == "llm":
        from services.llm.server import main as serve_main
    elif stage == "flow":
        from services.flow.server import main as serve_main
    elif stage == "frontend":
        from services.frontend.server import main as serve_main
    else:
        from services.vocoder.server import main as serve_main
    from services.common.config import ConfigError
    from services.common.malloc_tuning import return_freed_memory_to_os

    return_freed_memory_to_os()  # before any model is loaded: see the module's docstring
    try:
        serve_main(rest)
    except ConfigError as exc:  # a bad setting: one line naming it, not a traceback
        raise SystemExit(f"cosyvoice serve {stage}: {exc}") from None


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("cosyvoice-serving")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if argv[0] in ("--version", "-V", "version"):
        print(f"cosyvoice {version()}")
        return
    command, rest = argv[0], argv[1:]
    if command in ("synth", "speakers", "health"):
        # A client's failure is one stderr line; gRPC core would log a failed TLS handshake
        # (at INFO) before it. It reads the variable once, when grpc is first imported: here.
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    if command == "serve":
        _serve(rest)
    elif command == "up":
        from services.cli.up import main as up_main

        up_main(rest)
    elif command == "synth":
        from services.cli.synth import main as synth_main

        synth_main(rest)
    elif command == "speakers":
        from services.cli.speakers import main as speakers_main

        speakers_main(rest)
    elif command == "bench":
        from services.cli.bench import main as bench_main

        bench_main(rest)
    elif command == "health":
        from services.cli.health import main as health_main

        health_main(rest)
    elif command == "check-model":
        from services.cli.check_model import main as check_model_main

        check_model_main(rest)
    elif command == "download-model":
        from services.cli.download_model import main as download_model_main

        download_model_main(rest)
    elif command == "export":
        from services.cli.export import main as export_main

        export_main(rest)
    elif command == "make-tiny-model":
        from services.tinymodel.writer import main as tiny_main

        tiny_main(rest)
    else:
        raise SystemExit(f"cosyvoice: unknown command {command!r}\n\n{USAGE}")


if __name__ == "__main__":
    main()
