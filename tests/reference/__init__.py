"""The reference implementation (PyPI `cosyvoice2-eu`, upstream CosyVoice vendored) as a test oracle.

It is installed with --no-deps, so the few heavy modules its imports touch but inference never
uses (torchaudio, lightning, matcha.utils' training helpers) are replaced by empty stubs here.
Import `ref` from this package before importing anything under `cosyvoice.`.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
import types


def _stub(name: str, **attrs: object) -> types.ModuleType:
    module = types.ModuleType(name)
    # transformers' is_torchaudio_available() calls find_spec, which needs a __spec__.
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__path__ = []  # type: ignore[attr-defined]
    for key, value in attrs.items():
        setattr(module, key, value)
    sys.modules[name] = module
    return module


def install_stubs() -> None:
    if "torchaudio" not in sys.modules:
        _stub("torchaudio")
        _stub("torchaudio.compliance")
        _stub("torchaudio.compliance.kaldi")
    if "lightning" not in sys.modules:
        _stub("lightning")
        _stub("lightning.pytorch")
        _stub("lightning.pytorch.utilities", rank_zero_only=lambda fn: fn)
    if "matcha.utils" not in sys.modules:
        import matcha

        utils = _stub("matcha.utils")
        utils.__path__ = [os.path.join(os.path.dirname(matcha.__file__), "utils")]  # type: ignore[attr-defined]


def ref(module: str) -> types.ModuleType:
    """Import a reference module, e.g. ref('cosyvoice.flow.flow')."""
    install_stubs()
    return importlib.import_module(module)
