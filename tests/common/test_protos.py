import importlib.util
import re
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
generate_protos = importlib.import_module("generate_protos")


def test_committed_stubs_are_fresh(tmp_path):
    generate_protos.generate(tmp_path)
    committed = ROOT / "services" / "common" / "pb"
    fresh = {p.name: p.read_text() for p in tmp_path.iterdir()}
    current = {p.name: p.read_text() for p in committed.iterdir() if p.is_file() and not p.name.endswith(".pyc")}
    assert fresh.keys() == current.keys(), "run `make protos`"
    stale = [name for name in fresh if fresh[name] != current[name]]
    assert not stale, f"stale generated stubs {stale}: run `make protos` and commit"


def test_stubs_import_relatively_and_never_the_reference_package():
    for path in (ROOT / "services" / "common" / "pb").glob("*.py"):
        assert not re.search(r"^from cosyvoice", path.read_text(), re.MULTILINE), path.name


@pytest.mark.parametrize("name", ["common", "llm", "flow", "vocoder", "tts", "frontend", "speakers"])
def test_every_message_field_and_rpc_is_commented(name):
    lines = (ROOT / "protos" / "cosyvoice" / "v1" / f"{name}.proto").read_text().splitlines()
    declaration = re.compile(
        r"^\s*(message|enum|service|rpc|oneof)\s|^\s*(optional |repeated )?[\w.]+\s+\w+\s*=\s*\d+;"
    )
    for index, line in enumerate(lines):
        if declaration.match(line) and not line.strip().startswith("//"):
            assert lines[index - 1].strip().startswith("//"), f"{name}.proto:{index + 1} {line.strip()}"
