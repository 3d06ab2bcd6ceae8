"""The Dockerfile, read by the official parser (PyPI `dockerfile`), since no Docker engine runs here.

The parser parses and does not lint (`FROMM` parses fine), so these tests check what a build
needs and what the deployment contract promises: every COPY source exists and passes
.dockerignore, installs read the lock files, both targets run as UID 10001 with the
healthcheck, bases are pinned, and the CUDA base matches the CUDA wheels in the GPU lock.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile
import pytest

ROOT = Path(__file__).resolve().parents[2]
UID = "10001"
FINAL = ("gpu", "cpu")


@dataclass
class Stage:
    name: str
    base: str  # an image reference or an earlier stage's name
    commands: list = field(default_factory=list)

    def all(self, cmd: str) -> list:
        return [c for c in self.commands if c.cmd == cmd]

    def env(self) -> dict[str, str]:
        pairs = [c.value for c in self.all("ENV")]
        return {k: v for value in pairs for k, v in zip(value[::2], value[1::2])}


def parse_stages() -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    current = None
    for command in dockerfile.parse_file(str(ROOT / "Dockerfile")):
        if command.cmd == "FROM":
            image, *rest = command.value
            name = rest[1] if len(rest) == 2 and rest[0].upper() == "AS" else f"#{len(stages)}"
            current = stages[name] = Stage(name, image)
        else:
            assert current is not None or command.cmd == "ARG", f"{command.cmd} before any FROM"
            if current is not None:
                current.commands.append(command)
    return stages


STAGES = parse_stages()


def image_of(stage: str) -> str:
    """The image a stage finally rests on, following FROM <earlier stage> links."""
    while stage in STAGES:
        stage = STAGES[stage].base
    return stage


def flag(command, name: str) -> str | None:
    return next((f.split("=", 1)[1] for f in command.flags if f.startswith(f"--{name}=")), None)


def test_both_targets_exist_and_are_the_last_stages():
    # A bare `docker build .` builds the last stage: let that be one of the two images.
    assert set(FINAL) <= set(STAGES), f"stages: {list(STAGES)}"
    assert list(STAGES)[-1] in FINAL


def test_every_command_is_a_dockerfile_instruction():
    known = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
             "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}  # fmt: skip
    typos = [c.original for s in STAGES.values() for c in s.commands if c.cmd not in known]
    assert not typos, f"not instructions (the parser accepts anything): {typos}"


def test_bases_are_pinned_tags():
    for stage in STAGES.values():
        if stage.base in STAGES:
            continue
        assert "$" not in stage.base, f"{stage.name}: a base from a build arg cannot be checked"
        _, _, tag = stage.base.rpartition("/")[2].partition(":")
        assert tag and tag.split("@")[0] != "latest" or "@sha256:" in stage.base, (
            f"{stage.name}: base {stage.base} is not pinned to a tag"
        )


def dockerignore_lets_through(path: str) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or one of its parents wins."""
    included = True
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pattern) or fnmatch.fnmatchcase(c, pattern.removeprefix("**/"))
               for c in candidates):  # fmt: skip
            included = negate
    return included


def copies():
    for stage in STAGES.values():
        for command in stage.all("COPY") + stage.all("ADD"):
            yield stage, command


def test_copy_sources_exist_and_reach_the_build_context():
    seen = []
    for stage, command in copies():
        source_stage = flag(command, "from")
        if source_stage is not None:
            # Only stages: an image named here would escape the pinned-base check above.
            earlier = list(STAGES)[: list(STAGES).index(stage.name)]
            assert source_stage in earlier, f"{command.original}: --from names no earlier stage"
            continue
        for source in command.value[:-1]:
            matches = list(ROOT.glob(source))
            assert matches, f"{command.original}: {source} does not exist"
            assert dockerignore_lets_through(source), f"{source} is excluded by .dockerignore"
            seen.append(source)
    assert "requirements/runtime-gpu.txt" in seen and "requirements/runtime-cpu.txt" in seen


def test_dockerignore_keeps_local_state_out():
    for path in (".venv", "out", ".git", "tests", "services/__pycache__", "services/x.egg-info"):
        assert not dockerignore_lets_through(path), f"{path} would be sent to the daemon"


def test_no_add_of_urls():
    # ADD <url> downloads unpinned, unverified bytes; the locks say what is fetched.
    for _, command in copies():
        if command.cmd == "ADD":
            assert not any(re.match(r"(https?|git)://|git@", s) for s in command.value[:-1]), command.original


def pip_installs(stage: Stage) -> list[list[str]]:
    """The argument lists of every `pip install` in a stage's RUN commands."""
    found = []
    for run in stage.all("RUN"):
        for part in re.split(r"&&|;|\|\|", " ".join(run.value)):
            words = shlex.split(part)
            for i in range(len(words) - 1):
                if words[i] == "pip" and words[i + 1] == "install":
                    found.append(words[i + 2 :])
    return found


def copied_files(stage: Stage) -> dict[str, str]:
    """Destination basename -> repo source, for a stage's plain COPYs of files."""
    names = {}
    for command in stage.all("COPY"):
        if flag(command, "from") is None:
            for source in command.value[:-1]:
                names[Path(source).name] = source
    return names


@pytest.mark.parametrize("target, lock", [("gpu", "runtime-gpu.txt"), ("cpu", "runtime-cpu.txt")])
def test_the_image_venv_is_installed_from_its_lock(target, lock):
    venv_from = [flag(c, "from") for c in STAGES[target].all("COPY") if c.value[-1] == "/opt/venv"]
    assert len(venv_from) == 1, f"{target}: copies /opt/venv from {venv_from}"
    builder = STAGES[venv_from[0]]
    copied = copied_files(builder)
    installs = pip_installs(builder)
    read = [copied.get(Path(args[i + 1]).name) for args in installs for i, a in enumerate(args) if a == "-r"]
    assert f"requirements/{lock}" in read, f"{builder.name} installs {read}, not {lock}"
    assert "requirements/runtime-nodeps.txt" in read
    # Test-only packages (the reference implementation, pytest...) stay out of the images.
    assert not {"requirements/test.txt", "requirements/test-nodeps.txt"} & set(read)
    for args in installs:
        takes_value = ("-r", "--extra-index-url")
        positional = [
            a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] not in takes_value)
        ]
        assert positional in ([], ["/src"]), f"{builder.name}: installs {positional} outside the lock"
        files = [copied.get(Path(args[i + 1]).name, "") for i, a in enumerate(args) if a == "-r"]
        if positional == ["/src"] or any(f.endswith("nodeps.txt") for f in files):
            assert "--no-deps" in args, f"{builder.name}: {args} must not resolve dependencies"


@pytest.mark.parametrize("target", FINAL)
def test_final_stage_contract(target):
    stage = STAGES[target]
    assert stage.all("USER")[-1].value[0].split(":") == [UID, UID], "runs as cosyvoice 10001:10001"
    entrypoint = stage.all("ENTRYPOINT")[-1]
    assert entrypoint.json and list(entrypoint.value) == ["cosyvoice"]
    health = stage.all("HEALTHCHECK")[-1].value
    assert health[0] == "CMD" and list(health[1:3]) == ["cosyvoice", "health"], health
    volumes = {v for c in stage.all("VOLUME") for v in c.value}
    assert {"/var/cache/cosyvoice", "/var/lib/cosyvoice"} <= volumes
    assert "/models" not in volumes, "/models is a read-only mount, not an anonymous volume"
    env = stage.env()
    assert env["COSYVOICE_CACHE"] == "/var/cache/cosyvoice"
    assert env["COSYVOICE_GATEWAY_SPEAKER_DB"] == "/var/lib/cosyvoice/speakers.db"
    assert env["HF_HUB_OFFLINE"] == "1", "no hub downloads when a container starts"
    # The volumes' mount points belong to the user, so fresh named volumes inherit that owner.
    setup = " ".join(" ".join(r.value) for r in stage.all("RUN"))
    assert re.search(rf"useradd --uid {UID} --gid {UID}\b", setup)
    assert re.search(rf"install -d -o {UID} -g {UID}\b[^&]*/var/cache/cosyvoice /var/lib/cosyvoice", setup)
    # The CPU compose variant's init service writes the tiny model into a named volume at /models.
    assert re.search(rf"install -d -o {UID} -g {UID}\b[^&]*/models\b", setup)
    assert not re.search(r"\b(curl|wget|pip)\b", setup), "final stages download nothing"


def test_gpu_base_matches_the_cuda_wheels_in_the_lock():
    image = image_of("gpu")
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime-ubuntu\d+\.\d+", image)
    assert match, f"gpu base {image} is not an nvidia/cuda cudnn runtime tag"
    base_cuda = match.group(1, 2)
    lock = (ROOT / "requirements" / "runtime-gpu.txt").read_text()
    toolkit = re.search(r"^cuda-toolkit==(\d+)\.(\d+)\.", lock, re.M)
    assert toolkit, "runtime-gpu.txt pins no cuda-toolkit: which CUDA is torch built for?"
    assert toolkit.group(1, 2) == base_cuda, f"CUDA {'.'.join(base_cuda)} base, {toolkit.group(0)} wheels"
    # Every wheel built for one CUDA major (-cuNN) must be built for the base's.
    majors = set(re.findall(r"^[\w.-]+-cu(\d+)(?:-[\w-]+)?==", lock, re.M))
    assert majors == {base_cuda[0]}, f"CUDA majors in runtime-gpu.txt: {majors}"
    assert re.search(r"^onnxruntime-gpu==", lock, re.M) and re.search(r"^tensorrt-cu\d+==", lock, re.M)
    assert image_of("cpu").startswith("python:3.11"), "both images run CPython 3.11"


def test_the_installed_package_carries_its_data_files():
    # The images install a wheel, not the source tree: a file the code opens beside itself
    # (the tiny model's yaml, ...) must be declared package data or it is missing there.
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = setuptools.get("package-data", {})
    missing = []
    for top in ("services", "gateway"):
        for path in (ROOT / top).rglob("*"):
            if path.is_dir() or "__pycache__" in path.parts or path.suffix in (".py", ".pyi", ".pyc"):
                continue
            # setuptools matches a package's patterns against paths relative to the package's
            # folder, so a file in a plain subfolder (services/http/static/) is declared by an
            # ancestor package with "static/*".
            ancestors = [path.parent, *path.parent.relative_to(ROOT).parents]
            declared_by = [
                pattern
                for folder in (ROOT / a if not a.is_absolute() else a for a in ancestors)
                if folder != ROOT
                for pattern in declared.get(".".join(folder.relative_to(ROOT).parts), [])
                if fnmatch.fnmatch(path.relative_to(folder).as_posix(), pattern)
            ]
            if not declared_by and not any(fnmatch.fnmatch(path.name, p) for p in declared.get("*", [])):
                missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"
