#!/usr/bin/env bash
# Regenerate the lock files under requirements/ from pyproject.toml (the loose requirements).
#
#   scripts/lock.sh             relock after a pyproject edit; unchanged pins are kept
#   scripts/lock.sh --upgrade   move every pin to the newest version that resolves
#
# Needs uv (`pip install uv` in any scratch venv, or UV=/path/to/uv) and network access to
# pypi.org. The locks are for the images' platform: CPython 3.11 on x86_64 manylinux_2_28
# (glibc >= 2.28: Debian 12, Ubuntu 22.04/24.04), whatever machine runs this script.
#
# Outputs (installed by pip, see Makefile and Dockerfile):
#   requirements/runtime-cpu.txt  pyproject dependencies + requirements/cpu.in (torch +cpu)
#   requirements/runtime-gpu.txt  the same with onnxruntime swapped for onnxruntime-gpu,
#                                 + requirements/gpu.in (CUDA torch, TensorRT)
#   requirements/test.txt         the `test` extra, only what it adds on top of runtime-cpu.txt,
#                                 resolved together with it so the two always install together
set -euo pipefail
cd "$(dirname "$0")/.."

UV=${UV:-uv}
PYTHON=${PYTHON:-python3}
UPGRADE=()
if [[ "${1:-}" == "--upgrade" ]]; then UPGRADE=(--upgrade); shift; fi
[[ $# -eq 0 ]] || { echo "usage: scripts/lock.sh [--upgrade]" >&2; exit 2; }

# The +cpu torch wheel is not on PyPI. These machines keep it in /opt/wheels; elsewhere
# PyTorch's CPU index page serves it (override with TORCH_CPU_LINKS=DIR-or-URL).
TORCH_CPU_LINKS=${TORCH_CPU_LINKS:-$([[ -d /opt/wheels ]] && echo /opt/wheels || echo https://download.pytorch.org/whl/cpu/torch/)}

COMMON=(
  --python-version 3.11 --python-platform x86_64-manylinux_2_28
  # PyPI only: the machine's pip mirrors must not decide what the images get.
  --index-url https://pypi.org/simple --no-config
  --custom-compile-command "scripts/lock.sh" --quiet
)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
req="$PWD/requirements"

# pyproject.toml -> plain requirement files. uv could read pyproject itself, but the GPU lock
# must drop onnxruntime (onnxruntime-gpu provides the same module), which needs a rewrite.
"$PYTHON" - "$work" <<'EOF'
import re, sys, tomllib
from pathlib import Path
out = Path(sys.argv[1])
project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
name = lambda spec: re.split(r"[\s<>=!~;\[(]", spec, maxsplit=1)[0].lower().replace("_", "-")
deps = project["dependencies"]
(out / "runtime.in").write_text("\n".join(deps) + "\n")
(out / "runtime-gpu.in").write_text("\n".join(d for d in deps if name(d) != "onnxruntime") + "\n")
(out / "test.in").write_text("\n".join(project["optional-dependencies"]["test"]) + "\n")
EOF
cp "$req/cpu.in" "$req/gpu.in" "$work/"

# Paths are relative to $work so the generated comments ("via -r runtime.in") stay the same
# from one machine to the next.
cd "$work"
# Seed each output with the current lock: uv keeps the versions it finds there (unless --upgrade).
for f in runtime-cpu runtime-gpu test; do [[ -f "$req/$f.txt" ]] && cp "$req/$f.txt" "$f.txt"; done
cat runtime-cpu.txt test.txt > all.txt 2>/dev/null || true

# 1. Runtime and test extras resolved together, so the test lock never needs a runtime version
#    the runtime lock does not have (e.g. transformers' tokenizers bound).
"$UV" pip compile "${COMMON[@]}" "${UPGRADE[@]}" --find-links "$TORCH_CPU_LINKS" \
  runtime.in cpu.in test.in -o all.txt
# 2. The CPU runtime: a subset of that resolution.
"$UV" pip compile "${COMMON[@]}" --find-links "$TORCH_CPU_LINKS" \
  runtime.in cpu.in -c all.txt -o runtime-cpu.txt
# 3. The test lock: the same resolution, minus what the runtime lock already pins.
mapfile -t runtime_names < <(sed -n 's/^\([A-Za-z0-9._-]*\)==.*/\1/p' runtime-cpu.txt)
no_emit=(); for n in "${runtime_names[@]}"; do no_emit+=(--no-emit-package "$n"); done
"$UV" pip compile "${COMMON[@]}" --find-links "$TORCH_CPU_LINKS" \
  test.in -c runtime-cpu.txt -c all.txt "${no_emit[@]}" -o test.txt
# 4. The GPU runtime: every package it shares with the CPU runtime at the same version (one
#    tested set), except torch itself (the CUDA build, not +cpu).
grep -v '^torch==' runtime-cpu.txt > cpu-shared.txt
"$UV" pip compile "${COMMON[@]}" "${UPGRADE[@]}" runtime-gpu.in gpu.in -c cpu-shared.txt -o runtime-gpu.txt

cp runtime-cpu.txt runtime-gpu.txt test.txt "$req/"
echo "wrote requirements/runtime-cpu.txt, requirements/runtime-gpu.txt, requirements/test.txt"
