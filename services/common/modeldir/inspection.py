"""Inspect a model directory without building any model: what is there, whether each stage
could load it, and which synthesis modes it supports.

This is what `cosyvoice check-model` prints and what `cosyvoice download-model` runs after a
download. Each finding is tied to a *component* (a file or a config section); a stage is
ready when all its components are, and a mode when every stage is and its own needs are met.
Every problem is one line that names the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from services.common.modeldir.checkpoint_summary import CheckpointSummary, summarize_checkpoint
from services.common.modeldir.expected_files import FileEntry, list_expected_files, list_other_files
from services.common.modeldir.expected_shapes import (
    Expectations,
    flow_expectations,
    hift_expectations,
    llm_expectations,
)
from services.common.modeldir.layout import (
    FLOW_CHECKPOINT,
    HIFT_CHECKPOINT,
    LLM_CHECKPOINT,
    QWEN_DIR,
    SPEAKER_MODEL,
    SPK2INFO,
    ModelDir,
    ModelDirError,
)
from services.common.modeldir.onnx_summary import OnnxSummary, summarize_onnx
from services.common.modeldir.tokenizer import CosyVoiceTokenizer

# Which components each stage process reads when it starts (services/<stage>/server.py).
STAGE_COMPONENTS: dict[str, tuple[str, ...]] = {
    "llm": ("config", "llm.config", "tokenizer", LLM_CHECKPOINT),
    "flow": ("config", "flow.config", FLOW_CHECKPOINT, SPK2INFO),
    "vocoder": ("config", "hift.config", HIFT_CHECKPOINT),
    "frontend": ("config", "tokenizer", SPEAKER_MODEL, "speech_tokenizer", SPK2INFO),
}
MODES = ("sft", "zero_shot", "cross_lingual", "instruct2")
NO_PRESETS_HINT = (
    "register a voice with `cosyvoice speakers add NAME --prompt-audio F --prompt-text T` and use "
    "it in zero_shot, cross_lingual or instruct2"
)


@dataclass
class TokenizerSummary:
    directory: str
    tokens: int | None = None  # including CosyVoice's special tokens
    endofprompt_id: int | None = None


@dataclass
class SpeakerEntry:
    name: str
    kind: str  # "x-vector only" or "prompt: N speech tokens"


@dataclass
class StageStatus:
    name: str
    ok: bool
    problems: list[str]


@dataclass
class ModeStatus:
    name: str
    ready: bool
    missing: list[str]


@dataclass
class ModelReport:
    root: str
    generation: str
    files: list[FileEntry]
    other_files: list[str]
    checkpoints: list[CheckpointSummary] = field(default_factory=list)
    onnx_models: list[OnnxSummary] = field(default_factory=list)
    tokenizer: TokenizerSummary | None = None
    spk2info_present: bool = False
    speakers: list[SpeakerEntry] = field(default_factory=list)
    stages: list[StageStatus] = field(default_factory=list)
    modes: list[ModeStatus] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    ok: bool = False


class _Findings:
    """Problems per component, in the order found."""

    def __init__(self) -> None:
        self.by_component: dict[str, list[str]] = {}

    def add(self, component: str, problems: list[str]) -> None:
        # One line each, whatever the source: yaml and torch errors span several lines.
        self.by_component.setdefault(component, []).extend(" ".join(p.split()) for p in problems)

    def of(self, components: tuple[str, ...]) -> list[str]:
        seen: dict[str, None] = {}
        for component in components:
            for problem in self.by_component.get(component, []):
                seen.setdefault(problem)
        return list(seen)


def _check_checkpoint(
    model_dir: ModelDir, name: str, stage: str, config_key: str, expectations: Callable[[ModelDir], Expectations],
    config_ok: bool, findings: _Findings, strip: str = "",
) -> CheckpointSummary | None:  # fmt: skip
    shapes = counts = None
    if config_ok:
        try:
            shapes, counts = expectations(model_dir)
        except ModelDirError as exc:
            findings.add(config_key, [str(exc)])
    path = model_dir.root / name
    if not path.is_file():
        findings.add(name, [f"{name} is missing (the {stage} stage loads it)"])
        return None
    summary = summarize_checkpoint(path, stage, shapes, counts, key_substring_to_strip=strip)
    findings.add(name, summary.problems)
    return summary


def _check_onnx(
    model_dir: ModelDir, name: str, component: str, speech_tokenizer: bool, findings: _Findings
) -> OnnxSummary | None:
    path = model_dir.root / name
    if not path.is_file():
        findings.add(component, [f"{name} is missing (the frontend loads it at start)"])
        return None
    summary = summarize_onnx(path, speech_tokenizer)
    findings.add(component, summary.problems)
    return summary


def _check_tokenizer(model_dir: ModelDir, findings: _Findings) -> tuple[TokenizerSummary, CosyVoiceTokenizer | None]:
    summary = TokenizerSummary(QWEN_DIR)
    directory = model_dir.root / QWEN_DIR
    if not directory.is_dir():
        findings.add("tokenizer", [f"{QWEN_DIR}/ is missing (the llm and frontend read its tokenizer)"])
        return summary, None
    try:
        tokenizer = CosyVoiceTokenizer.from_dir(directory)
    except Exception as exc:  # ModelDirError, or the tokenizers library's own errors
        findings.add("tokenizer", [f"{QWEN_DIR}: cannot build the text tokenizer ({' '.join(str(exc).split())[:160]})"])
        return summary, None
    summary.tokens, summary.endofprompt_id = len(tokenizer), tokenizer.endofprompt_id
    try:
        vocab_size = int(model_dir.qwen_config.get("vocab_size", 0))
    except ModelDirError:
        vocab_size = 0  # reported by the llm's config check
    if vocab_size and summary.tokens > vocab_size:
        findings.add("tokenizer", [
            f"{QWEN_DIR}: the tokenizer has {summary.tokens} tokens but config.json vocab_size is {vocab_size}: "
            "text token ids would fall outside the LLM's embedding"
        ])  # fmt: skip
    return summary, tokenizer


def _check_speakers(
    model_dir: ModelDir, tokenizer: CosyVoiceTokenizer | None, findings: _Findings
) -> list[SpeakerEntry]:
    from services.frontend.spk2info import read_spk2info

    path = model_dir.spk2info_path
    if path is None:
        return []

    def decode(ids: list[int]) -> str:  # prompt texts are stored as token ids in official files
        return tokenizer.decode(ids, skip_special_tokens=False) if tokenizer is not None else ""

    try:
        records = read_spk2info(path, decode)
    except ValueError as exc:
        findings.add(SPK2INFO, [str(exc).replace(str(path), SPK2INFO, 1)])
        return []
    return [
        SpeakerEntry(r.name, "x-vector only" if r.is_embedding_only else f"prompt: {r.num_tokens} speech tokens")
        for r in records
    ]


def _modes(report: ModelReport, findings: _Findings, speech_tokenizer_name: str) -> list[ModeStatus]:
    recording_models = (
        (SPEAKER_MODEL, SPEAKER_MODEL, "the recording's speaker embedding"),
        (speech_tokenizer_name, "speech_tokenizer", "the recording's speech tokens"),
    )
    modes = []
    for mode in MODES:
        missing, covered = [], set()
        if mode == "sft":
            if not report.spk2info_present:
                missing.append(f"preset speakers: the directory has no {SPK2INFO} (the official "
                               f"CosyVoice2-0.5B has none); {NO_PRESETS_HINT}")  # fmt: skip
            elif not report.speakers and not findings.of((SPK2INFO,)):
                missing.append(f"preset speakers: {SPK2INFO} holds none; {NO_PRESETS_HINT}")
        else:
            for name, component, purpose in recording_models:
                if problems := findings.of((component,)):
                    missing.append(f"a loadable {name} ({purpose})")
                    covered.update(problems)
        # Every request passes through all four stages; name those broken for other reasons.
        missing += [
            f"the {stage.name} stage (see its problems)"
            for stage in report.stages
            if not stage.ok and not set(stage.problems) <= covered
        ]
        modes.append(ModeStatus(mode, ready=not missing, missing=missing))
    return modes


def inspect_model_dir(path: str | Path) -> ModelReport:
    """Everything check-model reports; raises ModelDirError only if `path` is not a model
    directory at all (missing, or no known yaml)."""
    model_dir = ModelDir.open(path)
    files = list_expected_files(model_dir)
    report = ModelReport(str(model_dir.root), model_dir.generation.name, files,
                         list_other_files(model_dir.root, files))  # fmt: skip
    findings = _Findings()
    try:
        model_dir.config  # noqa: B018 - parse once; every stage needs it
        config_ok = True
    except ModelDirError as exc:
        yaml_name = model_dir.generation.yaml_name  # some parser messages do not name the file
        findings.add("config", [str(exc) if yaml_name in str(exc) else f"{yaml_name}: {exc}"])
        config_ok = False
    checkpoints = [
        _check_checkpoint(model_dir, LLM_CHECKPOINT, "llm", "llm.config", llm_expectations, config_ok, findings),
        _check_checkpoint(model_dir, FLOW_CHECKPOINT, "flow", "flow.config", flow_expectations, config_ok, findings),
        _check_checkpoint(model_dir, HIFT_CHECKPOINT, "vocoder", "hift.config", hift_expectations, config_ok,
                          findings, strip="generator."),
    ]  # fmt: skip
    report.checkpoints = [summary for summary in checkpoints if summary is not None]
    speech_tokenizer_name = model_dir.generation.speech_tokenizer_name
    onnx_models = [
        _check_onnx(model_dir, SPEAKER_MODEL, SPEAKER_MODEL, False, findings),
        _check_onnx(model_dir, speech_tokenizer_name, "speech_tokenizer", True, findings),
    ]
    report.onnx_models = [summary for summary in onnx_models if summary is not None]
    report.tokenizer, tokenizer = _check_tokenizer(model_dir, findings)
    report.spk2info_present = model_dir.spk2info_path is not None
    report.speakers = _check_speakers(model_dir, tokenizer, findings)
    report.stages = [
        StageStatus(stage, not findings.of(components), findings.of(components))
        for stage, components in STAGE_COMPONENTS.items()
    ]
    stages_ok = all(stage.ok for stage in report.stages)
    report.modes = _modes(report, findings, speech_tokenizer_name)
    report.problems = findings.of(tuple(findings.by_component))
    if stages_ok and not any(mode.ready for mode in report.modes):
        report.problems.append("no synthesis mode is usable with this directory")
    report.ok = stages_ok and any(mode.ready for mode in report.modes)
    return report
