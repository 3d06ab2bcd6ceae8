"""`cosyvoice bench` options: every bad value is one stderr line and exit status 2, before any
process starts; variants become the stages' environment variables; comparison tables."""

import math

import pytest

from services.cli import bench_cli
from services.cli.bench_report import LevelStats
from services.cli.bench_stages import StageLevel
from services.cli.bench_variants import (
    Variant,
    applied,
    compare_e2e,
    compare_stages,
    format_e2e_comparison,
    format_stage_comparison,
    make_variants,
)


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        bench_cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no usage block, no traceback
    return err


@pytest.mark.parametrize("value", ["0", "1,-4", "two", ",", "1.5"])
@pytest.mark.parametrize("mode", [[], ["stages"]])
def test_bad_concurrency_is_one_line_and_exit_2(value, mode, capsys):
    err = _fails([*mode, "--concurrency", value], capsys)
    assert err.startswith("cosyvoice bench") and "--concurrency" in err


@pytest.mark.parametrize("mode", [[], ["stages"]])
def test_unknown_backend_is_one_line_naming_the_setting(mode, capsys):
    err = _fails([*mode, "--backend", "torch,warp-drive"], capsys)
    assert "warp-drive" in err and "COSYVOICE_FLOW_BACKEND" in err and "onnxruntime" in err


def test_unknown_dtype_names_the_stage_setting(capsys):
    err = _fails(["--dtype", "float8"], capsys)
    assert "float8" in err and "COSYVOICE_LLM_DTYPE" in err


def test_a_combination_a_stage_refuses_is_refused_up_front(capsys):
    err = _fails(["stages", "--backend", "onnxruntime", "--dtype", "bfloat16"], capsys)
    assert "variant onnxruntime/bfloat16" in err and "float32" in err


@pytest.mark.parametrize("argv, words", [
    (["--backend", "torch,torch"], "twice"),
    (["--backend", ","], "comma-separated"),
    (["--backend", "torch", "--address", "127.0.0.1:1"], "--address"),
    (["--requests", "0"], "--requests"),
    (["--num-threads", "-1"], "--num-threads"),
    (["stages", "--only", "split"], "unrecognized"),
    (["--texts-file", "/nonexistent/texts.txt"], "/nonexistent/texts.txt"),
])
def test_other_bad_options(argv, words, capsys):
    assert words in _fails(argv, capsys)


def test_variants_are_every_backend_by_dtype_in_order():
    variants = make_variants(["torch", "onnxruntime"], ["float32", "bfloat16"])
    assert [v.name for v in variants] == ["torch/float32", "torch/bfloat16", "onnxruntime/float32",
                                          "onnxruntime/bfloat16"]
    assert make_variants(None, None) == [Variant()] and Variant().name == "default" and Variant().env() == {}
    assert Variant("onnxruntime", "float32").env() == {
        "COSYVOICE_FLOW_BACKEND": "onnxruntime", "COSYVOICE_VOCODER_BACKEND": "onnxruntime",
        "COSYVOICE_LLM_DTYPE": "float32", "COSYVOICE_FLOW_DTYPE": "float32", "COSYVOICE_VOCODER_DTYPE": "float32",
    }


def test_applied_sets_and_restores_the_environment(monkeypatch):
    monkeypatch.setenv("COSYVOICE_FLOW_DTYPE", "float16")
    monkeypatch.delenv("COSYVOICE_FLOW_BACKEND", raising=False)
    import os

    with applied({"COSYVOICE_FLOW_DTYPE": "bfloat16", "COSYVOICE_FLOW_BACKEND": "onnxruntime"}):
        assert os.environ["COSYVOICE_FLOW_DTYPE"] == "bfloat16" and os.environ["COSYVOICE_FLOW_BACKEND"] == "onnxruntime"
    assert os.environ["COSYVOICE_FLOW_DTYPE"] == "float16" and "COSYVOICE_FLOW_BACKEND" not in os.environ


def _stats(system, concurrency, throughput, p50, p99):
    nan = math.nan
    return LevelStats(system, concurrency, 4, 0, 1.0, throughput, throughput, p50, p99, p50, 4, 0, 0,
                      nan, nan, nan, nan, nan, nan)


def test_e2e_comparison_ratios_are_to_the_first_variant():
    runs = [
        {"variant": "torch", "levels": [{"concurrency": 1, "split": _stats("split", 1, 5.0, 0.2, 0.4)}]},
        {"variant": "onnxruntime", "levels": [{"concurrency": 1, "split": _stats("split", 1, 7.5, 0.1, 0.5)}]},
    ]
    rows = compare_e2e(runs)
    assert [r["variant"] for r in rows] == ["torch", "onnxruntime"]
    assert rows[0]["throughput_ratio"] == 1.0
    assert rows[1]["throughput_ratio"] == pytest.approx(1.5) and rows[1]["ttfa_p50_ratio"] == pytest.approx(0.5)
    table = format_e2e_comparison(rows)
    assert "onnxruntime" in table and "1.50×" in table and "100.0 ms" in table


def test_stage_comparison_has_both_ratios():
    def levels(*throughputs):
        out = [StageLevel("flow", c, 2, 0, 1.0, t, t, 0.1) for c, t in zip((1, 4), throughputs)]
        out[0].ratio, out[1].ratio = 1.0, throughputs[1] / throughputs[0]
        return {"flow": out}

    rows = compare_stages([{"variant": "a", "stages": levels(10.0, 20.0)}, {"variant": "b", "stages": levels(20.0, 30.0)}])
    assert [(r["variant"], r["concurrency"], r["ratio_to_first_level"], r["ratio_to_first_variant"]) for r in rows] == [
        ("a", 1, 1.0, 1.0), ("a", 4, 2.0, 1.0), ("b", 1, 1.0, 2.0), ("b", 4, 1.5, 1.5)]
    assert "mel frames/s" in format_stage_comparison(rows)
