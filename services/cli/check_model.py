"""`cosyvoice check-model DIR [--json]`: validate a model directory without building a model.

Prints the expected files with their sizes, each checkpoint's tensors, parameters, dtypes and
key shapes checked against the yaml, the ONNX models' inputs and outputs, the preset speakers,
whether each stage could load, and which synthesis modes are ready. Exit code 0 when every
stage can load and at least one mode is usable; otherwise 1, with one line per problem on
stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # the real imports pull in torch; --help and bad arguments must not wait for it
    from services.common.modeldir.inspection import ModelReport

PROG = "cosyvoice check-model"
_MAX_OTHER_FILES = 8


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _millions(count: int) -> str:
    return f"{count / 1e6:.1f} M" if count >= 100_000 else f"{count:,}"


def _shape(shape: Sequence[int | str] | None) -> str:
    if shape is None:
        return "absent"
    return "(" + ", ".join(str(dim) for dim in shape) + ("," if len(shape) == 1 else "") + ")"


def _mark(ok: bool) -> str:
    return "ok  " if ok else "BAD "


def _files(report: "ModelReport") -> list[str]:
    lines = ["files"]
    width = max(len(entry.name) for entry in report.files)
    for entry in report.files:
        status = "ok" if entry.present else ("MISSING" if entry.required else "absent")
        lines.append(f"  {status:<8} {entry.name:<{width}}  {human_size(entry.size_bytes):>9}  {entry.used_by}")
    if report.other_files:
        shown = ", ".join(report.other_files[:_MAX_OTHER_FILES])
        hidden = len(report.other_files) - _MAX_OTHER_FILES
        more = f", … (+{hidden})" if hidden > 0 else ""
        lines.append(f"  + {len(report.other_files)} other file(s), not read by this server: {shown}{more}")
    return lines


def _checkpoints(report: "ModelReport") -> list[str]:
    lines = ["checkpoints (key shapes checked against the config)"]
    for ckpt in report.checkpoints:
        dtypes = ", ".join(f"{dtype} x{count}" for dtype, count in ckpt.dtypes.items()) or "-"
        lines.append(f"  {ckpt.file} ({ckpt.stage}): {ckpt.tensors} tensors, {_millions(ckpt.parameters)} "
                     f"parameters, {dtypes}")  # fmt: skip
        for check in ckpt.shapes:
            detail = "" if check.ok else f", config needs {_shape(check.expected)}"
            lines.append(f"    {_mark(check.ok)} {check.key} {_shape(check.found)}{detail}  [{check.because}]")
        for count in ckpt.counts:
            detail = "" if count.ok else f", config needs {count.expected}"
            lines.append(f"    {_mark(count.ok)} {count.prefix}.*: {count.found} blocks{detail}  [{count.because}]")
    if not report.checkpoints:
        lines.append("  none present")
    return lines


def _onnx_models(report: "ModelReport") -> list[str]:
    lines = ["onnx models (the frontend feeds inputs by position)"]
    for model in report.onnx_models:
        opset = f"opset {model.opset}" if model.opset is not None else "no opset"
        lines.append(f"  {model.file} ({model.role}, {opset})")
        for kind, specs in (("in ", model.inputs), ("out", model.outputs)):
            lines += [f"    {kind}  {spec.name}: {spec.dtype} {_shape(spec.shape)}" for spec in specs]
    if not report.onnx_models:
        lines.append("  none present")
    return lines


def _tokenizer_and_speakers(report: "ModelReport") -> list[str]:
    lines = ["text tokenizer"]
    tokenizer = report.tokenizer
    if tokenizer is not None and tokenizer.tokens is not None:
        lines.append(f"  {tokenizer.directory}: {tokenizer.tokens} tokens with CosyVoice's specials "
                     f"(<|endofprompt|> = {tokenizer.endofprompt_id})")  # fmt: skip
    else:
        lines.append("  not loadable")
    lines += ["", "preset speakers (spk2info.pt)"]
    if not report.spk2info_present:
        lines.append("  none: no spk2info.pt (the official CosyVoice2-0.5B ships none)")
    elif not report.speakers:
        lines.append("  none readable")
    lines += [f"  {speaker.name}: {speaker.kind}" for speaker in report.speakers]
    return lines


def _verdict(report: "ModelReport") -> list[str]:
    """Stages, modes and the result: what download-model prints after a download."""
    lines = ["stages"]
    for stage in report.stages:
        lines.append(f"  {stage.name:<9} {'ok' if stage.ok else f'CANNOT LOAD ({len(stage.problems)} problem(s))'}")
    lines += ["", "modes"]
    for mode in report.modes:
        lines.append(f"  {mode.name:<14} {'ready' if mode.ready else 'not ready, needs ' + '; '.join(mode.missing)}")
    ready = [mode.name for mode in report.modes if mode.ready]
    lines.append("")
    if report.ok:
        lines.append(f"result: usable ({len(ready)} of {len(report.modes)} modes ready: {', '.join(ready)})")
    else:
        lines.append(f"result: NOT usable ({len(report.problems)} problem(s), listed on stderr)")
    return lines


def render(report: "ModelReport", summary_only: bool = False) -> str:
    """The human-readable report, sections in the order an operator fixes things."""
    sections = [[f"model directory {report.root} ({report.generation})"]]
    if not summary_only:
        sections += [_files(report), _checkpoints(report), _onnx_models(report), _tokenizer_and_speakers(report)]
    sections.append(_verdict(report))
    return "\n\n".join("\n".join(section) for section in sections)


def report_as_json(report: "ModelReport") -> str:
    return json.dumps(dataclasses.asdict(report), indent=2, ensure_ascii=False)


def run_check(model_dir: str, as_json: bool, prog: str = PROG, summary_only: bool = False) -> int:
    """Inspect, print the report (stdout) and the problems (stderr); the exit code to use."""
    from services.common.modeldir.layout import ModelDir, ModelDirError

    try:
        ModelDir.open(model_dir)  # before importing torch: a wrong path is answered at once
        from services.common.modeldir.inspection import inspect_model_dir

        report = inspect_model_dir(model_dir)
    except ModelDirError as exc:  # not a model directory at all: nothing to report
        if as_json:  # scripts parsing stdout still get an answer
            print(json.dumps({"model_dir": model_dir, "ok": False, "problems": [str(exc)]}, indent=2), flush=True)
        raise SystemExit(f"{prog}: {exc}") from None
    print(report_as_json(report) if as_json else render(report, summary_only), flush=True)
    for problem in report.problems:
        print(f"{prog}: {problem}", file=sys.stderr)
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", metavar="DIR", help="the model directory, e.g. /models/CosyVoice2-0.5B")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (problems still go to stderr)")
    args = parser.parse_args(argv)
    code = run_check(args.model_dir, args.json)
    if code:
        raise SystemExit(code)
