"""The lock files under requirements/ agree with pyproject.toml, and `make install` uses them.

pyproject.toml holds the loose requirements; scripts/lock.sh pins them (see docs/images.md).
These checks make a pyproject edit without a relock fail CI: a new dependency is missing from
the locks, a raised lower bound is not met by the pinned version.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
REQ = ROOT / "requirements"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def read_pins(path: Path) -> dict[str, Version]:
    """name -> version of a lock file; every requirement line must be an exact pin."""
    pins: dict[str, Version] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{path.name}:{number}: not an exact pin: {raw!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"{path.name}:{number}: {name} pinned twice"
        pins[name] = Version(match.group(2))
    return pins


PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DEPENDENCIES = [Requirement(spec) for spec in PROJECT["dependencies"]]
TEST_EXTRAS = [Requirement(spec) for spec in PROJECT["optional-dependencies"]["test"]]
CPU = read_pins(REQ / "runtime-cpu.txt")
GPU = read_pins(REQ / "runtime-gpu.txt")
TEST = read_pins(REQ / "test.txt")


def assert_pinned(requirement: Requirement, pins: dict[str, Version], lock: str) -> None:
    name = canonicalize_name(requirement.name)
    assert name in pins, f"{requirement} (pyproject.toml) is not in {lock}: run scripts/lock.sh"
    # prereleases=True: a pin is what it is; only the bounds are in question here.
    assert requirement.specifier.contains(pins[name], prereleases=True), (
        f"{lock} pins {name}=={pins[name]}, outside pyproject's {requirement}: run scripts/lock.sh"
    )


@pytest.mark.parametrize("requirement", DEPENDENCIES, ids=str)
def test_every_dependency_is_pinned_in_the_cpu_lock(requirement):
    assert_pinned(requirement, CPU, "runtime-cpu.txt")


@pytest.mark.parametrize("requirement", DEPENDENCIES, ids=str)
def test_every_dependency_is_pinned_in_the_gpu_lock(requirement):
    if canonicalize_name(requirement.name) == "onnxruntime":
        # The GPU image swaps in onnxruntime-gpu (same module, never both); same version bounds.
        assert "onnxruntime" not in GPU, "runtime-gpu.txt must not hold the CPU onnxruntime too"
        requirement = Requirement(str(requirement).replace("onnxruntime", "onnxruntime-gpu", 1))
    assert_pinned(requirement, GPU, "runtime-gpu.txt")


@pytest.mark.parametrize("requirement", TEST_EXTRAS, ids=str)
def test_every_test_extra_is_pinned(requirement):
    # test.txt holds only what the tests add; what the runtime already has stays in its lock.
    assert_pinned(requirement, {**CPU, **TEST}, "test.txt (or runtime-cpu.txt)")


def test_the_test_lock_adds_to_the_cpu_runtime_without_overlap():
    # Installed together (`pip install -r runtime-cpu.txt -r test.txt`): one pin per package.
    assert not set(TEST) & set(CPU), f"pinned in both locks: {sorted(set(TEST) & set(CPU))}"


def test_cpu_and_gpu_runtimes_share_their_versions():
    # One tested set: the GPU image differs in torch's build and the CUDA wheels only.
    differing = {n: (CPU[n], GPU[n]) for n in set(CPU) & set(GPU) if CPU[n] != GPU[n]}
    assert set(differing) <= {"torch"}, f"versions differ between the locks: {differing}"
    assert CPU["torch"].public == GPU["torch"].public, "one torch release in both images"
    assert CPU["torch"].local == "cpu" and GPU["torch"].local is None


def test_the_cpu_lock_pulls_in_no_cuda():
    cuda_like = ("nvidia-", "cuda-", "tensorrt", "triton", "onnxruntime-gpu")
    cuda = sorted(n for n in CPU if n.startswith(cuda_like))
    assert not cuda, f"runtime-cpu.txt would install CUDA packages: {cuda}"


@pytest.mark.parametrize("source, lock", [("cpu.in", CPU), ("gpu.in", GPU)], ids=["cpu", "gpu"])
def test_the_lock_inputs_are_in_their_lock(source, lock):
    # Editing cpu.in / gpu.in (e.g. a torch bump) without relocking fails here.
    for raw in (REQ / source).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            assert_pinned(requirement, lock, source.replace(".in", " lock"))


@pytest.mark.parametrize(
    "path, package", [("runtime-nodeps.txt", "openai-whisper"), ("test-nodeps.txt", "cosyvoice2-eu")]
)
def test_the_no_deps_files_pin_their_package(path, package):
    assert package in read_pins(REQ / path)


def make_dry_run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return subprocess.run(["make", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_make_install_installs_from_the_locks(tmp_path):
    # -n -B: print every command of a from-scratch install, run none of them.
    venv = tmp_path / "venv"
    result = make_dry_run("-n", "-B", "install", f"VENV={venv}")
    assert result.returncode == 0, result.stderr
    installs = [line for line in result.stdout.splitlines() if " pip install " in line]
    assert f"{venv}/bin/python -m pip install -q -r requirements/runtime-cpu.txt -r requirements/test.txt" in installs
    assert any("--no-deps -e ." in line for line in installs), installs
    assert any("--no-deps -r requirements/runtime-nodeps.txt" in line for line in installs), installs
    # Nothing is installed by name: every pip install reads a lock file (or is pip itself / the
    # package with --no-deps), so CI installs exactly the set the images install.
    for line in installs:
        words = line.split(" pip install ", 1)[1].split()
        rest = [w for i, w in enumerate(words) if not w.startswith("-") and words[i - 1] != "-r"]
        assert rest in ([], ["pip"], ["."]), f"installs something outside the locks: {line}"


def test_a_lock_edit_makes_the_install_stale(tmp_path):
    # The stamp's prerequisites: a relock must reinstall on the next `make test`.
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(REQ, tmp_path / "requirements")
    stamp = tmp_path / "venv" / ".installed"
    stamp.parent.mkdir()
    stamp.touch()
    old = stamp.stat().st_mtime - 100
    for path in [tmp_path / "pyproject.toml", *(tmp_path / "requirements").iterdir()]:
        os.utime(path, (old, old))
    assert make_dry_run("-q", "install", "VENV=venv", cwd=tmp_path).returncode == 0, "stamp is newer: up to date"
    for lock in ("runtime-cpu.txt", "test.txt", "runtime-nodeps.txt", "test-nodeps.txt"):
        os.utime(tmp_path / "requirements" / lock, None)  # now: newer than the stamp
        assert make_dry_run("-q", "install", "VENV=venv", cwd=tmp_path).returncode == 1, f"{lock} edit ignored"
        os.utime(tmp_path / "requirements" / lock, (old, old))
