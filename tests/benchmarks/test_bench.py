"""`retino bench input|train` on tiny data: the table, the final JSON line, clear errors, and a
start-up path free of mlflow and dvc. Not timed: the numbers only have to be there."""

import json
import os
import subprocess
import sys

import pytest
import torch

from retino.cli import main
from tests.conftest import ROOT

KEYS = {"baseline_images_per_s", "retino_images_per_s", "ratio", "device"}
INPUT_KEYS = KEYS | {"full_decode_images_per_s", "preprocess_images_per_s", "preprocess_ratio"}


def last_json(out: str, keys: set[str] = INPUT_KEYS) -> dict:
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result) == keys
    assert result["baseline_images_per_s"] > 0 and result["retino_images_per_s"] > 0
    ratio = result["retino_images_per_s"] / result["baseline_images_per_s"]
    assert abs(result["ratio"] - ratio) < 0.01 * ratio + 0.01
    assert result["device"].startswith(("cpu", "cuda"))
    return result


def test_bench_input_prints_a_table_then_json(tiny_source, capsys):
    argv = ["bench", "input", "--data", str(tiny_source), "--size", "48"]
    assert main([*argv, "--batch-size", "8", "--batches", "2"]) == 0
    out = capsys.readouterr().out
    last_json(out)
    lines = out.splitlines()
    assert lines[0].startswith("retino bench input: 48 px, batch 8, 2 batches")
    rows = [line.split()[0] for line in lines[3:6]]
    assert rows == ["lab-report", "retino", "lab-report,"]
    assert "Resize" not in out  # the stored images are 48 px already


def test_bench_input_resizes_the_seed_path_to_the_same_shape(tiny_source, capsys):
    argv = ["bench", "input", "--data", str(tiny_source), "--size", "32"]
    assert main([*argv, "--batch-size", "8", "--batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "Resize(32)" in out and "stored images are 48x48 px" in out
    last_json(out)


TRAIN_KEYS = KEYS | {"no_input_images_per_s", "wait_share", "input_share", "paths"}


def test_bench_train_times_both_loops_and_the_step_alone(tiny_source, capsys):
    argv = ["bench", "train", "--data", str(tiny_source), "--arch", "resnet18", "--size", "32"]
    assert main([*argv, "--batch-size", "8", "--batches", "1"]) == 0
    out = capsys.readouterr().out
    result = last_json(out, TRAIN_KEYS)
    paths = result["paths"]
    assert list(paths) == ["lab-report loop", "retino train step", "retino, no input",
                           "lab-report, memory kept"]  # fmt: skip
    assert result["no_input_images_per_s"] == paths["retino, no input"] > 0
    assert 0 <= result["wait_share"] < 1 and 0 <= result["input_share"] < 1
    share = 1 - result["retino_images_per_s"] / result["no_input_images_per_s"]
    assert result["input_share"] == pytest.approx(max(share, 0), abs=1e-3)
    assert "wait: the loop waiting for the next batch" in out


def test_bench_train_without_the_lab_report(tiny_source, capsys):
    argv = ["bench", "train", "--data", str(tiny_source), "--arch", "resnet18", "--size", "32"]
    assert main([*argv, "--batch-size", "8", "--batches", "1", "--no-lab-report"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["baseline_images_per_s"] is None and result["ratio"] is None
    assert list(result["paths"]) == ["retino train step", "retino, no input"]
    assert "lab-report" not in out


def test_bench_preprocess_times_the_stage(tiny_source, capsys):
    assert main(["bench", "preprocess", "--data", str(tiny_source), "--size", "32",
                 "--images", "12"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert out.startswith("retino bench preprocess: 12 images of 48x48 px to 32 px")
    assert result["cpu_images_per_s"] > 0 and result["device"].startswith(("cpu", "cuda"))
    # with a GPU: the nvJPEG path, its speed-up and how far its cache is from the CPU's
    assert ("nvjpeg_images_per_s" in result) == torch.cuda.is_available()


def test_bad_input_is_one_line_error(tmp_path, tiny_source, capsys):
    assert main(["bench", "input", "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nowhere" in err and "Traceback" not in err
    argv = ["bench", "train", "--data", str(tiny_source), "--arch", "resnet7", "--size", "32"]
    assert main(argv) == 2
    assert "resnet7" in capsys.readouterr().err


def test_missing_image_is_one_line_error(tiny_data, capsys):
    first = (tiny_data / "train_img.csv").read_text().split()[0]
    (tiny_data / "images" / f"{first}.jpeg").unlink()
    assert main(["bench", "input", "--data", str(tiny_data), "--batches", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{first}.jpeg" in err and len(err.splitlines()) == 1


@pytest.mark.slow  # a fresh interpreter on a copy of the source tree
def test_runs_from_the_source_tree_without_mlflow_or_dvc(tiny_source):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = ["bench", "input", "--data", str(tiny_source), "--size", "32", "--batches", "1"]
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "retino", *argv],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    last_json(proc.stdout)
    imported = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert len(imported) > 100  # -X importtime did report
    assert not [line for line in imported if "mlflow" in line or "dvc" in line]


def test_bench_intervals_times_the_bootstrap_against_the_plain_loop(capsys):
    assert main(["bench", "intervals", "--images", "400", "--resamples", "50", "--loop", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("retino bench intervals: 400 test images, 200 patients, 50 resamples")
    result = json.loads(out.strip().splitlines()[-1])
    assert result["patients"] == 200 and result["vectorised_s"] > 0
    assert result["ratio"] > 1  # even at this size the loop over resamples is slower


@pytest.mark.slow  # a real model server
def test_bench_serve_loads_a_served_model_beside_retino_predict():
    argv = ["bench", "serve", "--requests", "6", "--concurrency", "3", "--distinct", "2",
            "--frame", "320x240", "--size", "32", "--rounds", "1", "--near-limit", "1"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "retino", *argv], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["errors"] == 0 and result["requests"] == 6 and result["concurrency"] == 3
    assert result["served_images_per_s"] > 0 and result["predict_images_per_s"] > 0
    ratio = result["served_images_per_s"] / result["predict_images_per_s"]
    assert abs(result["ratio"] - ratio) < 0.01
    assert result["served_cpu_ms"] > 0 and result["client_cpu_ms"] > 0
    assert len(result["rss_mb"]) == 3 and all(mb > 100 for mb in result["rss_mb"])
    assert len(result["near_limit_rss_mb"]) == 1
    assert "served" in proc.stdout and "retino predict" in proc.stdout


@pytest.mark.slow  # the lab loop and a whole `dvc exp run` of a fresh copy: ~1 min
def test_bench_pipeline_times_the_lab_loop_and_each_stage(capsys):
    assert main(["bench", "pipeline", "--train", "24", "--test", "8", "--px", "96", "--size",
                 "32", "--epochs", "1", "--batch-size", "8"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    (run,) = result["runs"]
    assert result["lab_s"] > 0 and run["pipeline_s"] > run["training_loop_s"] > 0
    assert result["ratio"] == pytest.approx(result["lab_s"] / run["pipeline_s"], abs=0.01)
    # every stage ran, under the probe, and its phases account for its process
    assert list(run["stages"]) == ["prepare", "preprocess", "train", "evaluate", "plot"]
    train, evaluate = run["stages"]["train"], run["stages"]["evaluate"]
    assert train["training loop"] == pytest.approx(run["training_loop_s"], abs=0.01)
    assert train["imports"] > 0 and evaluate["imports"] > 0
    assert -1 <= run["test_qwk"] <= 1
    table = out.split("dvc exp run", 1)[1]
    for row in ("imports", "training loop", "model export", "stage process", "DVC, exits"):
        assert f"\n  {row}" in table, row


def test_bench_pipeline_refuses_a_source_that_is_no_checkout(tmp_path, capsys):
    assert main(["bench", "pipeline", "--source", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --source {tmp_path}: no stages")
