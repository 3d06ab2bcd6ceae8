"""`cosyvoice bench --plot DIR`: real PNG files that matplotlib reads back, from a tiny CLI
run and from per-stage results."""

import json

import pytest

from services.cli import bench, bench_cli
from services.cli.bench_plot import plot_stages
from services.cli.bench_stages import StageLevel

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path):
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and 5_000 < len(data) < 150_000, (path, len(data))
    image = imread(path)
    height, width = image.shape[:2]
    assert width > 300 and height > 200


def test_a_tiny_cli_run_writes_both_charts_and_the_json(tiny_model_dir, tmp_path, monkeypatch, capsys):
    for name in bench.THREAD_ENV:  # main() sets these for itself; restored afterwards
        monkeypatch.setenv(name, "1")
    plots, out = tmp_path / "plots", tmp_path / "bench.json"
    bench_cli.main(["--model-dir", str(tiny_model_dir), "--only", "monolith", "--concurrency", "1,2",
                    "--requests", "1", "--warmup", "0", "--text", "Hi.", "--plot", str(plots), "--json", str(out)])
    assert sorted(p.name for p in plots.iterdir()) == ["first-audio-vs-concurrency.png", "throughput-vs-concurrency.png"]
    for path in plots.iterdir():
        _check_png(path)
    assert "wrote" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert [level["concurrency"] for level in result["levels"]] == [1, 2]
    assert result["variants"][0]["variant"] == "default" and result["config"]["plot"] == str(plots)


@pytest.mark.parametrize("variants", [["default"], ["torch", "onnxruntime"]])
def test_stage_chart_one_line_per_variant(tmp_path, variants):
    runs = []
    for index, name in enumerate(variants):
        stages = {}
        for stage in ("llm", "flow", "vocoder"):
            levels = [StageLevel(stage, c, 2, 0, 1.0, 10.0 * c, 10.0 * c ** 0.5 * (index + 1), 0.05) for c in (1, 4, 8, 16)]
            for level in levels:
                level.ratio = level.throughput / levels[0].throughput
            stages[stage] = levels
        runs.append({"variant": name, "stages": stages})
    (path,) = plot_stages(runs, tmp_path / "new-dir", "tiny, cpu")
    assert path.name == "stage-scaling-vs-concurrency.png"
    _check_png(path)
