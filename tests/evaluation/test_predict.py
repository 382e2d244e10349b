"""`retino predict` and `register`: the evaluation path on new files, bad input, the registry."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from retino.cli import main as cli
from retino.data.cache import read_index
from retino.evaluation.evaluate import cached_test, evaluate_test
from retino.evaluation.predict import PROBS, load_predictor
from retino.synth import synthesize
from retino.training import checkpoint
from retino.training.engine import FLIPS, predict
from retino.training.heads import Head
from retino.training.models import build_model
from retino.training.thresholds import cut
from tests.conftest import prepare_and_cache, tiny_config


def save_checkpoint(
    path: Path, cache: Path, seed: int = 0, thresholds=None, eye_weight=None, **overrides
) -> Path:
    """A checkpoint shaped like train's best.pt: untrained weights (predictions need no skill),
    the tiny config (with `overrides`, e.g. train__loss="regression"), the mean/std of the
    preprocessed images in `cache` and the given calibration."""
    torch.manual_seed(seed)
    cfg = tiny_config(**overrides)
    stats = read_index(cache)
    outputs = Head(cfg.train.loss).outputs
    state = checkpoint.Checkpoint(
        model=build_model(cfg.arch, outputs=outputs).state_dict(), config=cfg.to_dict(),
        normalisation={"mean": stats["mean"], "std": stats["std"]},
        epoch=1, best_epoch=1, history=[], tag="test", thresholds=thresholds,
        eye_weight=eye_weight,
    )  # fmt: skip
    checkpoint.save(state, path)
    return path


@pytest.fixture(scope="module")
def workspace(tiny_source, tmp_path_factory) -> Path:
    """data/, prepared/ and models/best.pt (untrained, with mean/std)."""
    root = tmp_path_factory.mktemp("predict")
    shutil.copytree(tiny_source, root / "data")
    prepare_and_cache(root / "data", root, tiny_config())
    (root / "models").mkdir()
    save_checkpoint(root / "models" / "best.pt", root / "preprocessed")
    return root


def run_cli(args: list[str], capfd) -> tuple[int, str]:
    """Exit status and all of stderr (captured at the file descriptor: MLflow's logging too)."""
    code = cli([str(a) for a in args])
    return code, capfd.readouterr().err


def test_predictions_match_the_evaluate_stage(workspace, tmp_path, capfd):
    ckpt = workspace / "models" / "best.pt"
    pred = load_predictor(str(ckpt), "cpu")
    evaluate_test(pred, cached_test(pred, workspace / "prepared", workspace / "preprocessed"),
                  tmp_path / "eval", resamples=0, seed=0)  # fmt: skip
    expected = pd.read_csv(tmp_path / "eval" / "predictions.csv")

    code, err = run_cli(["predict", workspace / "data" / "images", "--model", ckpt,
                         "--out", tmp_path / "p.csv", "--batch-size", 5], capfd)  # fmt: skip
    assert code == 0, err
    got = pd.read_csv(tmp_path / "p.csv")
    assert len(got) == 64  # the folder holds train and test images: all of them, sorted
    assert list(got.path) == sorted(got.path)
    assert list(got.columns) == ["path", "grade", "grade_name", *PROBS, "referable"]
    got["image"] = "images/" + got.path.map(lambda p: Path(p).name)
    both = expected.merge(got, on="image", suffixes=("_eval", ""))
    assert len(both) == len(expected) == 16
    assert (both.predicted == both.grade).all()
    for p in PROBS:
        np.testing.assert_allclose(both[p], both[f"{p}_eval"], atol=1e-5)
    assert set(got.referable) <= {"yes", "no"}
    assert ((got.grade >= 2) == (got.referable == "yes")).all()
    names = {0: "No DR", 1: "Mild", 2: "Moderate", 3: "Severe", 4: "Proliferative"}
    assert (got.grade_name == got.grade.map(names)).all()


THRESHOLDS = [0.1, 0.2, 0.3, 0.4]  # some cut points, as the train step fits them


def test_a_paired_eyes_regression_model_blends_each_eye_with_its_fellow(workspace, tmp_path,
                                                                        capfd):  # fmt: skip
    model = save_checkpoint(tmp_path / "best.pt", workspace / "preprocessed", eye_weight=0.25,
                            thresholds=THRESHOLDS, train__loss="regression",
                            eval__tta="flips", eval__paired_eyes=True)  # fmt: skip
    # a folder with both eyes of three patients, and the left eye of a fourth
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sorted((workspace / "data" / "images").iterdir())[:7]:  # sorted: eyes adjacent
        shutil.copy(path, folder)
    code, err = run_cli(["predict", folder, "--model", model, "--out", tmp_path / "p.csv"], capfd)
    assert code == 0, err
    got = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(got.columns) == ["path", "grade", "grade_name", "score", "referable", "fellow"]
    paired, lone = got.iloc[:6], got.iloc[6]
    assert all(
        f != p and Path(f).stem.split("_")[0] == Path(p).stem.split("_")[0]
        for p, f in zip(paired.path, paired.fellow, strict=True)
    )
    assert lone.fellow == "" and Path(lone.path).stem.endswith("_left")
    # the same weights without the blend: each image's own (flip-averaged) score
    own_model = save_checkpoint(tmp_path / "own.pt", workspace / "preprocessed",
                                thresholds=THRESHOLDS, train__loss="regression",
                                eval__tta="flips")  # fmt: skip
    code, err = run_cli(["predict", folder, "--model", own_model, "--out", tmp_path / "own.csv"],
                        capfd)  # fmt: skip
    assert code == 0, err
    own = pd.read_csv(tmp_path / "own.csv").set_index("path").score
    assert "fellow" not in pd.read_csv(tmp_path / "own.csv")
    expected = 0.75 * own[paired.path].to_numpy() + 0.25 * own[paired.fellow].to_numpy()
    np.testing.assert_allclose(paired.score, expected, atol=2e-6)
    assert lone.score == own[lone.path]  # an eye without its fellow keeps its own score
    assert (got.grade == cut(got.score.to_numpy(), THRESHOLDS)).all()


def test_flip_tta_is_the_mean_over_the_four_flips(workspace):
    pred = load_predictor(str(workspace / "models" / "best.pt"), "cpu")
    cached = np.load(workspace / "preprocessed" / "test.npy")[:6]
    images = torch.as_tensor(cached).permute(0, 3, 1, 2)
    labels = torch.zeros(len(images), dtype=torch.int64)

    def probs(batch: torch.Tensor, tta: bool) -> np.ndarray:
        loader = torch.utils.data.DataLoader(list(zip(batch, labels, strict=True)), batch_size=4)
        return predict(pred.model, loader, pred.transform, tta=tta)[1]

    flipped = [probs(images.flip(dims), tta=False) for dims in FLIPS]
    np.testing.assert_allclose(probs(images, tta=True), np.mean(flipped, 0), atol=1e-6)
    assert not np.allclose(flipped[0], flipped[3], atol=1e-3)  # the flips do differ


def test_a_regression_model_is_evaluated_on_its_score(workspace, tmp_path):
    model = save_checkpoint(tmp_path / "best.pt", workspace / "preprocessed",
                            thresholds=THRESHOLDS, train__loss="regression")  # fmt: skip
    pred = load_predictor(str(model), "cpu")
    cached = cached_test(pred, workspace / "prepared", workspace / "preprocessed")
    metrics, table = evaluate_test(pred, cached, tmp_path / "eval", resamples=50, seed=0)
    assert list(table.columns) == ["image", "label", "predicted", "score"]
    assert (table.predicted == cut(table.score.to_numpy(), THRESHOLDS)).all()
    ce_pred = load_predictor(str(workspace / "models" / "best.pt"), "cpu")
    ce_metrics, _ = evaluate_test(ce_pred, cached, tmp_path / "ce", resamples=50, seed=0)
    # the same report for both heads, intervals included; no calibration error for a score
    assert metrics.keys() == ce_metrics.keys() - {"referable_ece"}
    assert metrics["qwk_lo"] <= metrics["qwk"] <= metrics["qwk_hi"]
    assert pd.read_csv(tmp_path / "eval" / "predictions.csv").columns[-1] == "score"


def test_unreadable_files_are_listed_and_skipped(workspace, tmp_path, capfd):
    folder = tmp_path / "in"
    folder.mkdir()
    good = sorted((workspace / "data" / "images").iterdir())[:3]
    for path in good:
        shutil.copy(path, folder)
    (folder / "broken.jpeg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("not an image, not even tried")
    model = workspace / "models" / "best.pt"

    code, err = run_cli(["predict", folder, tmp_path / "gone.png", "--model", model,
                         "--out", tmp_path / "p.csv"], capfd)  # fmt: skip
    assert code == 0, err
    assert [Path(p).name for p in pd.read_csv(tmp_path / "p.csv").path] == [p.name for p in good]
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2
    assert "broken.jpeg: unreadable, skipped" in warnings[0]
    assert "gone.png: unreadable, skipped" in warnings[1]
    assert "2 unreadable skipped" in err

    code, err = run_cli(["predict", folder / "broken.jpeg", "--model", model], capfd)
    assert code == 2
    assert err.splitlines()[-1] == "error: none of the 1 images could be read"


def test_predictions_to_stdout(workspace, capsys):
    image = sorted((workspace / "data" / "images").iterdir())[0]
    assert cli(["predict", str(image), "--model", str(workspace / "models" / "best.pt")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("path,grade,grade_name,p0") and out[1].startswith(str(image))


def test_checkpoint_of_an_older_format_is_rejected(workspace, tmp_path, capfd):
    # what retino wrote before the format had a version: weights and config, no normalisation
    foreign = tmp_path / "foreign.pt"
    state = checkpoint.load(workspace / "models" / "best.pt")
    torch.save({"model": state.model, "epoch": 0, "config": state.config}, foreign)
    image = sorted((workspace / "data" / "images").iterdir())[0]
    code, err = run_cli(["predict", image, "--model", foreign], capfd)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {foreign}: a checkpoint without a format version")


def test_checkpoint_of_format_1_is_rejected(workspace, tmp_path, capfd):
    # format 1 had no thresholds and no eye weight
    state = torch.load(workspace / "models" / "best.pt", weights_only=True)
    del state["thresholds"], state["eye_weight"]
    torch.save({**state, "version": 1}, tmp_path / "v1.pt")
    image = sorted((workspace / "data" / "images").iterdir())[0]
    code, err = run_cli(["predict", image, "--model", tmp_path / "v1.pt"], capfd)
    assert code == 2 and err == (
        f"error: {tmp_path / 'v1.pt'}: checkpoint format 1, this retino reads format 2; use the "
        "retino version that wrote it, or train again\n"
    )


def test_damaged_checkpoint_is_rejected(workspace, tmp_path, capfd):
    state = torch.load(workspace / "models" / "best.pt", weights_only=True)
    del state["normalisation"]
    torch.save(state, tmp_path / "damaged.pt")
    image = sorted((workspace / "data" / "images").iterdir())[0]
    code, err = run_cli(["predict", image, "--model", tmp_path / "damaged.pt"], capfd)
    assert code == 2 and err.count("\n") == 1 and "damaged checkpoint" in err


@pytest.fixture
def in_trained(trained, monkeypatch) -> Path:
    monkeypatch.chdir(trained)
    monkeypatch.setenv("DVC_ROOT", str(trained))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return trained


def test_registry_round_trip(in_trained, tmp_path, capfd):
    run_id = json.loads((in_trained / "models" / "run.json").read_text())["run_id"]
    best = checkpoint.load(in_trained / "models" / "best.pt")  # train stores the normalisation
    stats = read_index(in_trained / "preprocessed")
    assert best.normalisation == {"mean": stats["mean"], "std": stats["std"]}
    code, err = run_cli(["register", "--run", run_id, "--name", "retino-dr",
                         "--alias", "champion"], capfd)  # fmt: skip
    assert code == 0, err

    images = sorted((in_trained / "data" / "images").iterdir())[:6]
    tables = {}
    sources = ["models/best.pt", "models:/retino-dr@champion", "models:/retino-dr/1",
               f"runs:/{run_id}/resnet18-scratch", "tiny-exp"]  # fmt: skip
    for i, source in enumerate(sources):
        code, err = run_cli(["predict", *images, "--model", source,
                             "--out", tmp_path / f"{i}.csv"], capfd)  # fmt: skip
        assert code == 0, (source, err)
        tables[source] = pd.read_csv(tmp_path / f"{i}.csv")
    for source in sources[1:]:
        pd.testing.assert_frame_equal(tables[source], tables["models/best.pt"])


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("missing/best.pt", "checkpoint file not found"),
        ("runs:/0123456789abcdef0123456789abcdef/model", "no run '0123456789abcdef"),
        ("no-such-experiment", "no checkpoint file, MLflow URI or finished run"),
        ("%%'garbage' !!", "no checkpoint file, MLflow URI or finished run"),
        ("models:/retino-dr@no-such-alias", "models:/retino-dr@no-such-alias: "),
        ("models:/retino-dr", "expected models:/<name>/<version> or models:/<name>@<alias>"),
        ("not-a-checkpoint.pt", "not-a-checkpoint.pt: not a readable checkpoint"),
    ],
)
def test_bad_model_is_a_one_line_error(in_trained, model, message, capfd):
    (in_trained / "not-a-checkpoint.pt").write_text("hello")
    image = sorted((in_trained / "data" / "images").iterdir())[0]
    code, err = run_cli(["predict", image, "--model", model], capfd)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_register_errors(in_trained, capfd):
    code, err = run_cli(["register", "--run", "feedbeef", "--name", "retino-dr"], capfd)
    assert (
        code == 2
        and err == f"error: MLflow run 'feedbeef' not found in sqlite:///{in_trained}/mlflow.db\n"
    )


def test_no_store_is_a_one_line_error(workspace, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    image = sorted((workspace / "data" / "images").iterdir())[0]
    code, err = run_cli(["predict", image, "--model", "some-experiment"], capfd)
    assert code == 2 and err.startswith("error: no MLflow store at") and err.count("\n") == 1
    assert not (tmp_path / "mlflow.db").exists()  # a typo never creates an empty store


def test_a_raw_camera_frame_is_graded_as_its_cached_twin(tmp_path, capfd):
    """The photograph at full size through `retino predict` and its row of the preprocessed
    cache through evaluate: the same pixels reach the model, so the same probabilities."""
    synthesize(tmp_path / "data", n_train=12, n_test=6, size=None, seed=8, frame=(1000, 700))
    cfg = tiny_config(data__val_fraction=0.5)
    prepare_and_cache(tmp_path / "data", tmp_path, cfg)
    save_checkpoint(tmp_path / "best.pt", tmp_path / "preprocessed")
    pred = load_predictor(str(tmp_path / "best.pt"), "cpu")
    cached = cached_test(pred, tmp_path / "prepared", tmp_path / "preprocessed")
    _, evaluated = evaluate_test(pred, cached, tmp_path / "eval", resamples=0, seed=0)

    frames = [tmp_path / "data" / p for p in evaluated.image]
    assert Image.open(frames[0]).size == (1000, 700)
    code, err = run_cli(["predict", *frames, "--model", tmp_path / "best.pt",
                         "--out", tmp_path / "p.csv"], capfd)  # fmt: skip
    assert code == 0, err
    graded = pd.read_csv(tmp_path / "p.csv")
    assert list(graded.path) == [str(p) for p in frames]
    photos = pred.photos(frames)
    assert all(np.array_equal(photos.load(i), cached.images[i]) for i in range(len(frames)))
    np.testing.assert_allclose(graded[PROBS], evaluated[PROBS], rtol=0, atol=1e-6)


def never(*args, **kwargs):
    raise AssertionError("graded although the output cannot be written")


@pytest.mark.parametrize(
    ("flag", "target", "message"),
    [
        ("--out", "{tmp}", "{tmp}: is a folder; give a file path such as {tmp}/grades.csv"),
        ("--out", "/proc/retino-grades.csv", "cannot create files in /proc"),
        ("--out", "/proc/self/status", "/proc/self/status: not writable"),
        ("--out", "{tmp}/a-file/grades.csv", "{tmp}/a-file is not a folder"),
        ("--cam", "{tmp}/a-file", "{tmp}/a-file: is a file, not a folder"),
    ],
)
def test_unwritable_output_fails_before_grading(
    workspace, tmp_path, capfd, monkeypatch, flag, target, message
):
    monkeypatch.setattr("retino.evaluation.predict.load_predictor", never)
    monkeypatch.setattr("retino.evaluation.predict.predict_images", never)
    (tmp_path / "a-file").write_text("keep me\n")
    image = sorted((workspace / "data" / "images").iterdir())[0]
    code, err = run_cli(["predict", image, "--model", workspace / "models" / "best.pt",
                         flag, target.format(tmp=tmp_path)], capfd)  # fmt: skip
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: ") and message.format(tmp=tmp_path) in err, err
    assert (tmp_path / "a-file").read_text() == "keep me\n"


def test_out_in_a_missing_folder_is_created(workspace, tmp_path, capfd):
    out = tmp_path / "new" / "deeper" / "grades.csv"
    image = sorted((workspace / "data" / "images").iterdir())[0]
    code, err = run_cli(["predict", image, "--model", workspace / "models" / "best.pt",
                         "--out", out], capfd)  # fmt: skip
    assert code == 0, err
    assert list(pd.read_csv(out).path) == [str(image)]
    assert [p.name for p in out.parent.iterdir()] == ["grades.csv"]  # no temp file left


@pytest.mark.parametrize(
    ("device", "message"),
    [
        # one past the last GPU: missing on every machine, with or without CUDA
        (f"cuda:{torch.cuda.device_count()}", "this machine has "),
        ("tpu", "expected auto, cpu, cuda or cuda:N"),
    ],
)
def test_a_device_this_machine_lacks_is_one_line(workspace, capfd, device, message):
    image = sorted((workspace / "data" / "images").iterdir())[0]
    code, err = run_cli(["predict", image, "--model", workspace / "models" / "best.pt",
                         "--device", device], capfd)  # fmt: skip
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: device '{device}': ") and message in err, err
