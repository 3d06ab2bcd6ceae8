"""Write a torch module as ONNX (TorchScript exporter, dynamic axes) atomically, and name the
file after the weights it was made from, so a changed checkpoint is never served by a stale graph."""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import torch

from services.common.backends import ONNX_OPSET, BackendError

# Bump when an export wrapper changes what a graph computes: old files are then ignored.
EXPORT_VERSION = 1


def weights_fingerprint(checkpoint: Path) -> str:
    """12 hex digits of the checkpoint's SHA-256 and the export version."""
    digest = hashlib.sha256(f"export-v{EXPORT_VERSION}".encode())
    with checkpoint.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def export_onnx(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_name: str,
    dynamic_axes: Mapping[str, Mapping[int, str]],
) -> Path:
    """Export in float32 to `path` (written to a temporary name, then renamed: replicas that
    export at the same time never read half a file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise BackendError(f"cannot write ONNX graphs to {path.parent}: {exc.strerror}") from None
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter warns about tracer shape arithmetic that dynamic axes cover.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, example, temporary, input_names=list(input_names), output_names=[output_name],
                dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()}, opset_version=ONNX_OPSET,
                do_constant_folding=True, dynamo=False,
            )
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path
