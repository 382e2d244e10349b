"""`retino bench scale` on tiny data: the tables, the final JSON line and clear errors. Not
timed: the numbers only have to be there and be consistent."""

import json

import pytest

from benchmarks.stages import main as stage_main
from retino.cli import main

KEYS = {"sizes", "ms_per_image", "growth", "cpu_growth", "peak_mb", "validate_old_ms",
        "validate_ms", "validate_speedup", "runs", "compare_s", "compare_process_s", "log_run_s",
        "device", "load"}  # fmt: skip


def last_json(out: str) -> dict:
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result) == KEYS
    assert result["device"].startswith("cpu: ")
    return result


def rows(out: str, dataset: str) -> list[str]:
    """The stage names of the main table's rows for `dataset`."""
    return [line[18:46].strip() for line in out.splitlines() if line.startswith(dataset + " ")]


def test_validate_on_small_images_and_frames(capsys):
    argv = ["bench", "scale", "--sizes", "30", "60", "--frames", "4", "--frame", "640x480"]
    assert main([*argv, "--stages", "validate", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    result = last_json(out)
    assert rows(out, "30 x 64 px") == rows(out, "60 x 64 px") == ["validate (old)", "validate"]
    assert rows(out, "4 x 640x480") == ["validate (old)", "validate"]
    assert result["sizes"] == [30, 60]
    assert set(result["ms_per_image"]) == {"validate (old)", "validate"}
    for stage, ms in result["ms_per_image"].items():
        assert len(ms) == 2 and min(ms) > 0
        assert result["growth"][stage] == pytest.approx(ms[1] / ms[0], rel=0.01)
        assert result["cpu_growth"][stage] > 0
        assert all(mb > 0 for mb in result["peak_mb"][stage])
    speedup = result["validate_old_ms"] / result["validate_ms"]
    assert result["validate_speedup"] == pytest.approx(speedup, rel=0.01)
    assert "retino validate on 4 x 640x480" in out
    assert result["runs"] == result["compare_s"] == result["log_run_s"] == []


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--frame", "10x10", "--frame 10x10: each side"), ("--arch", "resnet7", "resnet7"),
     ("--train-px", "8", "image_size")],
)  # fmt: skip
def test_bad_arguments_fail_before_any_data_is_written(capsys, option, value, message):
    assert main(["bench", "scale", "--sizes", "30", option, value]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and message in captured.err
    assert len(captured.err.splitlines()) == 1 and "writing" not in captured.err


def test_a_stage_that_fails_is_one_line(tmp_path, capsys):
    args = json.dumps({"data": str(tmp_path / "nowhere"), "work": str(tmp_path)})
    assert stage_main(["validate", args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nowhere" in err and "Traceback" not in err
    assert stage_main(["fly", "{}"]) == 2
    assert "usage: python -m benchmarks.stages" in capsys.readouterr().err


@pytest.mark.slow  # every stage in its own process: torch and mlflow imported a dozen times
def test_every_stage_and_the_store(capsys):
    argv = ["bench", "scale", "--sizes", "40", "80", "--frames", "12", "--frame", "640x480"]
    assert main([*argv, "--runs", "1", "2", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    result = last_json(out)
    stages = ["validate (old)", "validate", "prepare", "preprocess 32 px",
              "train epoch resnet18 32 px", "evaluate resnet18 32 px"]  # fmt: skip
    assert rows(out, "40 x 64 px") == rows(out, "80 x 64 px") == stages
    assert rows(out, "12 x 640x480")[2:] == ["prepare", "preprocess 256 px", "preprocess 512 px"]
    assert list(result["growth"]) == stages
    store = ["log a run", "retino compare"]
    assert rows(out, "store of 1 run") == rows(out, "store of 2 runs") == store
    assert result["runs"] == [1, 2] and len(result["compare_s"]) == len(result["log_run_s"]) == 2
    assert "; torch on " in result["device"]
