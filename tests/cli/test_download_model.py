"""`cosyvoice download-model` as a real process against a local fake hub (HF_ENDPOINT) or a
stand-in modelscope package: the download lands in DIR and gets checked; every failure is one
line naming the problem. Nothing here reaches a real hub."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.fake_hub import FakeHub, FakeRepo, linked_copy
from tests.conftest import ROOT

PROG = "cosyvoice download-model"
OFFICIAL_REPO = "FunAudioLLM/CosyVoice2-0.5B"
# A stand-in for `modelscope.hub.snapshot_download` with the real call's signature: copies the
# directory FAKE_MODELSCOPE_SOURCE and records how it was called.
MODELSCOPE_STUB = '''
import json, os, shutil

def snapshot_download(model_id, revision=None, cache_dir=None, local_dir=None, **kwargs):
    with open(os.environ["FAKE_MODELSCOPE_CALLS"], "a") as log:
        log.write(json.dumps({"model_id": model_id, "revision": revision, "local_dir": local_dir}) + "\\n")
    shutil.copytree(os.environ["FAKE_MODELSCOPE_SOURCE"], local_dir, dirs_exist_ok=True)
    return local_dir
'''


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "MODELSCOPE"))}
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=300, env={**clean, **env},
    )


def assert_one_line_error(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"{PROG}: {message}"], result.stderr


@pytest.fixture
def hf_env(tmp_path: Path) -> dict[str, str]:
    return {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}


@pytest.fixture
def official_layout(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """What the hub serves: the tiny model without spk2info.pt, like CosyVoice2-0.5B."""
    return linked_copy(tiny_model_dir, tmp_path / "served", skip=("spk2info.pt",))


def _digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in root.rglob("*")
        if path.is_file() and ".cache" not in path.relative_to(root).parts
    }


@pytest.mark.slow
def test_download_then_check_through_a_fake_hub(official_layout, hf_env, tmp_path):
    target = tmp_path / "models" / "CosyVoice2-0.5B"
    with FakeHub({OFFICIAL_REPO: official_layout}) as hub:
        env = {**hf_env, "HF_ENDPOINT": hub.endpoint}
        result = run_cli("download-model", "CosyVoice2-0.5B", str(target), env=env)
        assert result.returncode == 0, result.stderr
        sha = hub.repos[OFFICIAL_REPO].sha
        assert f"downloaded {OFFICIAL_REPO} at commit {sha[:12]}" in result.stdout
        assert ("GET", f"/api/models/{OFFICIAL_REPO}/revision/main") in hub.requests
        assert hub.unhandled == []
        assert _digests(target) == _digests(official_layout)
        # The check's summary: the official layout serves every mode but sft.
        assert "  sft            not ready, needs preset speakers: the directory has no spk2info.pt" in result.stdout
        assert "result: usable (3 of 4 modes ready: zero_shot, cross_lingual, instruct2)" in result.stdout

        # Again into the same directory, by repository id and commit: files already there are kept.
        hub.requests.clear()
        again = run_cli("download-model", OFFICIAL_REPO, str(target), "--revision", sha, "--force", env=env)
        assert again.returncode == 0, again.stderr
        assert ("GET", f"/api/models/{OFFICIAL_REPO}/revision/{sha}") in hub.requests
        assert not [path for method, path in hub.requests if "/resolve/" in path and method == "GET"]


def test_unknown_repository_is_one_line_and_creates_nothing(hf_env, tmp_path):
    target = tmp_path / "model"
    with FakeHub({}) as hub:
        result = run_cli("download-model", "someorg/missing", str(target), env={**hf_env, "HF_ENDPOINT": hub.endpoint})
    assert_one_line_error(
        result, f"repository someorg/missing not found on {hub.endpoint} (a private repository needs HF_TOKEN)"
    )
    assert not target.exists()


def test_unknown_revision_is_one_line(official_layout, hf_env, tmp_path):
    with FakeHub({OFFICIAL_REPO: official_layout}) as hub:
        env = {**hf_env, "HF_ENDPOINT": hub.endpoint}
        result = run_cli("download-model", "CosyVoice2-0.5B", str(tmp_path / "m"), "--revision", "v9", env=env)
    assert_one_line_error(result, f"revision 'v9' not found in repository {OFFICIAL_REPO} on {hub.endpoint}")


@pytest.mark.parametrize(
    ("error", "message"),
    [
        ((403, "GatedRepo"), "repository {repo} on {endpoint} is gated: accept its terms there and set HF_TOKEN"),
        ((500, ""), "{endpoint} answered HTTP 500 for {repo}; try again later"),
    ],
)
def test_hub_refusing_the_repository_is_one_line(official_layout, hf_env, tmp_path, error, message):
    with FakeHub({OFFICIAL_REPO: FakeRepo(official_layout, error=error)}) as hub:
        result = run_cli("download-model", "CosyVoice2-0.5B", str(tmp_path / "m"), env={**hf_env, "HF_ENDPOINT": hub.endpoint})
    assert_one_line_error(result, message.format(repo=OFFICIAL_REPO, endpoint=hub.endpoint))


def test_file_listed_but_not_served_is_one_line(official_layout, hf_env, tmp_path):
    repo = FakeRepo(official_layout, phantom_files=("zz-missing.bin",))
    with FakeHub({OFFICIAL_REPO: repo}) as hub:
        result = run_cli("download-model", "CosyVoice2-0.5B", str(tmp_path / "m"), env={**hf_env, "HF_ENDPOINT": hub.endpoint})
    assert_one_line_error(
        result, f"{hub.endpoint} lists a file of {OFFICIAL_REPO} that it then does not serve; rerun with --force to resume"
    )


def test_hub_down_is_one_line(hf_env, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]  # closed when the block ends: nothing listens there
    endpoint = f"http://127.0.0.1:{port}"
    result = run_cli("download-model", "CosyVoice2-0.5B", str(tmp_path / "m"), env={**hf_env, "HF_ENDPOINT": endpoint})
    assert_one_line_error(
        result,
        f"cannot reach {endpoint} ([Errno 111] Connection refused); run download-model on a machine that can "
        "reach the hub, or copy a model directory over (docs/models.md)",
    )


def test_offline_mode_is_named(hf_env, tmp_path):
    env = {**hf_env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = run_cli("download-model", "CosyVoice2-0.5B", str(tmp_path / "m"), env=env)
    assert_one_line_error(
        result, "HF_HUB_OFFLINE is set (the images set it for serving); run with HF_HUB_OFFLINE=0 to download"
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("CosyVoice3", "unknown model 'CosyVoice3': known models are CosyVoice2-0.5B; or give a hub repository as ORG/NAME"),
        ("a/b/c", "'a/b/c' is not a hub repository id (expected ORG/NAME)"),
    ],
)
def test_bad_model_name_is_one_line(hf_env, tmp_path, name, message):
    assert_one_line_error(run_cli("download-model", name, str(tmp_path / "m"), env=hf_env), message)


def test_target_that_is_a_file_is_refused(hf_env, tmp_path):
    target = tmp_path / "model"
    target.write_text("")
    result = run_cli("download-model", "CosyVoice2-0.5B", str(target), env=hf_env)
    assert_one_line_error(result, f"{target} exists and is not a directory")


def test_directory_that_is_not_empty_is_refused(hf_env, tmp_path):
    (tmp_path / "llm.pt").write_text("weights of another model")
    result = run_cli("download-model", "CosyVoice2-0.5B", str(tmp_path), env=hf_env)
    assert_one_line_error(
        result,
        f"{tmp_path} is not empty; choose a new directory, or pass --force to download into it "
        "(files of an earlier download of the same model are kept when they match)",
    )
    assert (tmp_path / "llm.pt").read_text() == "weights of another model"


def _stub_package(root: Path, body: str) -> Path:
    (root / "modelscope" / "hub").mkdir(parents=True)
    (root / "modelscope" / "__init__.py").write_text("")
    (root / "modelscope" / "hub" / "__init__.py").write_text("")
    (root / "modelscope" / "hub" / "snapshot_download.py").write_text(body)
    return root


def test_modelscope_not_installed_is_one_line(hf_env, tmp_path):
    # A package that fails to import, whatever is installed: the lazy import must catch it.
    stubs = _stub_package(tmp_path / "stubs", "raise ImportError('No module named modelscope')\n")
    env = {**hf_env, "PYTHONPATH": str(stubs)}
    result = run_cli("download-model", "CosyVoice2-0.5B", str(tmp_path / "m"), "--hub", "modelscope", env=env)
    assert_one_line_error(
        result, "--hub modelscope needs the modelscope package, which is not installed (pip install modelscope)"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("def snapshot_download(model_id, revision=None, cache_dir=None):\n    pass\n",
         "this modelscope is too old to download into a directory; pip install -U modelscope"),
        ("def snapshot_download(model_id, revision=None, local_dir=None):\n    raise RuntimeError('no such model')\n",
         "ModelScope could not download iic/CosyVoice2-0.5B: RuntimeError: no such model"),
    ],
)
def test_modelscope_failure_is_one_line(hf_env, tmp_path, body, message):
    stubs = _stub_package(tmp_path / "stubs", body)
    env = {**hf_env, "PYTHONPATH": str(stubs)}
    result = run_cli("download-model", "CosyVoice2-0.5B", str(tmp_path / "m"), "--hub", "modelscope", env=env)
    assert_one_line_error(result, message)


@pytest.mark.slow
def test_modelscope_download_uses_its_repository_id(official_layout, hf_env, tmp_path):
    stubs = _stub_package(tmp_path / "stubs", MODELSCOPE_STUB)
    calls = tmp_path / "calls.jsonl"
    env = {**hf_env, "PYTHONPATH": str(stubs), "FAKE_MODELSCOPE_CALLS": str(calls),
           "FAKE_MODELSCOPE_SOURCE": str(official_layout)}  # fmt: skip
    target = tmp_path / "m"
    result = run_cli("download-model", "CosyVoice2-0.5B", str(target), "--hub", "modelscope", env=env)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in calls.read_text().splitlines()] == [
        {"model_id": "iic/CosyVoice2-0.5B", "revision": None, "local_dir": str(target)}
    ]
    assert "result: usable (3 of 4 modes ready" in result.stdout
