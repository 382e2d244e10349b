"""The logged model serves photographs: base64 JPEG/PNG in, the grades `retino predict` gives out,
each hostile upload answered with its reason, over-limit requests refused, older models named.

In process through `mlflow.pyfunc.load_model`, and (slow) through a real `mlflow models serve` on
a free loopback port, stopped by its PID."""

import base64
import io
import json
import shutil
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import psutil
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from retino.cli import main as cli
from retino.evaluation.predict import PROBS
from retino.synth import synthesize
from retino.tracking import logged_model
from retino.tracking.registry import logged_model_id, register_model
from retino.tracking.runs import open_run
from retino.tracking.server import model_server
from retino.tracking.store import existing_store, open_store
from tests.data.test_images import claim_size, jpeg
from tests.evaluation.test_predict import THRESHOLDS, save_checkpoint

NAME = "retino-served"  # registered in the shared trained project: a name of our own
SERVED = f"models:/{NAME}@champion"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def run_cli(args: list, capfd) -> tuple[int, str]:
    code = cli([str(a) for a in args])
    return code, capfd.readouterr().err


@pytest.fixture(scope="module")
def registered(trained) -> Path:
    """The trained project, its logged model registered as NAME@champion (version 1)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        store = existing_store(trained)
        run_id = json.loads((trained / "models" / "run.json").read_text())["run_id"]
        assert register_model(store, run_id, NAME, "champion") == "1"
    return trained


@pytest.fixture
def project(registered, monkeypatch) -> Path:
    """Working in the trained project, its store the one MLflow and retino both use."""
    monkeypatch.chdir(registered)
    monkeypatch.setenv("DVC_ROOT", str(registered))
    uri = f"sqlite:///{registered}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return registered


def hostile(tmp: Path) -> dict[str, tuple[str, str]]:
    """id -> (base64 text, what its error must say): the uploads a server must survive."""
    photo = (jpeg(tmp / "photo.jpeg", (640, 480))).read_bytes()
    bomb = jpeg(tmp / "bomb.jpeg")
    claim_size(bomb, 20000, 20000)  # a few KB asking for 400 megapixels
    deep = io.BytesIO()
    Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)).save(deep, "PNG")
    gif = io.BytesIO()
    Image.new("RGB", (40, 40)).save(gif, "GIF")
    return {
        "not-an-image": (b64(b"name,grade\n10_left,2\n"), "is not a JPEG or PNG image"),
        "truncated": (b64(photo[: len(photo) // 2]), "is unreadable ("),
        "bomb": (b64(bomb.read_bytes()), "megapixels, over the limit of 36"),
        "sixteen-bit": (b64(deep.getvalue()), "has pixel mode I;16 (16-bit or float)"),
        "empty": ("", "is empty (0 bytes)"),
        "not-base64": ("%%% not base64 %%%", "not valid base64"),
        "not-ascii": ("/9j/4AAQ\u00e9", "not valid base64"),
        "gif": (b64(gif.getvalue()), "is not a JPEG or PNG image"),
    }


def check_hostile_rows(rows: list[dict], expected: dict[str, tuple[str, str]]) -> None:
    """Each hostile row has its one-line reason, and nulls (JSON null) for its grade."""
    for name, (_, message) in expected.items():
        (row,) = [r for r in rows if r["id"] == name]
        assert message in row["error"] and "\n" not in row["error"], (name, row["error"])
        graded = ["grade", "grade_name", *PROBS, "referable"]
        assert all(row[k] is None for k in graded), row


def test_the_logged_model_grades_photographs_as_retino_predict(project, tmp_path, capfd):
    images = sorted((project / "data" / "images").iterdir())[:8]
    code, err = run_cli(["predict", *images, "--model", "models/best.pt",
                         "--out", tmp_path / "p.csv"], capfd)  # fmt: skip
    assert code == 0, err
    expected = pd.read_csv(tmp_path / "p.csv")

    model = mlflow.pyfunc.load_model(SERVED)
    columns = logged_model.answer_columns(PROBS, paired=False)
    assert model.metadata.get_input_schema().input_names() == ["image", "id", "eye_pair"]
    assert model.metadata.get_output_schema().input_names() == columns
    request = pd.DataFrame({"image": [b64(p.read_bytes()) for p in images],
                            "id": [p.name for p in images]})  # fmt: skip
    answer = model.predict(request)
    assert list(answer.columns) == columns
    assert list(answer.id) == [p.name for p in images] and (answer.error == "").all()
    assert list(answer.grade) == list(expected.grade)
    assert list(answer.grade_name) == list(expected.grade_name)
    assert list(answer.referable) == list(expected.referable)
    np.testing.assert_allclose(answer[PROBS].to_numpy(float), expected[PROBS], rtol=0, atol=1e-6)
    run_id = json.loads((project / "models" / "run.json").read_text())["run_id"]
    model_id = logged_model_id(existing_store(project), run_id)
    assert set(answer.run_id) == {run_id} and set(answer.model_id) == {model_id}
    (versions,) = set(answer.model_version)  # all this model's versions, other names' too
    assert f"{NAME}/1" in versions.split(", ")


def test_hostile_uploads_get_their_reason_and_the_rest_is_graded(project, tmp_path):
    good = sorted((project / "data" / "images").iterdir())[:2]
    bad = hostile(tmp_path)
    rows = [(p.name, b64(p.read_bytes())) for p in good] + [(k, v[0]) for k, v in bad.items()]
    rows.insert(3, ("null", None))  # JSON null where the image should be
    request = pd.DataFrame(rows, columns=["id", "image"])
    answer = mlflow.pyfunc.load_model(SERVED).predict(request)
    assert list(answer.id) == list(request.id)
    graded = answer[answer.id.isin([p.name for p in good])]
    assert (graded.error == "").all() and graded.grade.map(lambda g: g in range(5)).all()
    nulls = {"null": ("", "no base64 text (null or not a string)")}
    check_hostile_rows(answer.to_dict("records"), bad | nulls)
    # the same image as a data URL, with line breaks as `base64` wraps it: graded
    text = b64(good[0].read_bytes())
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    again = mlflow.pyfunc.load_model(SERVED).predict(
        pd.DataFrame({"image": [f"data:image/jpeg;base64,{wrapped}"]})
    )
    assert again.error[0] == "" and again.id[0] == "row 0"
    assert again.p0[0] == graded.p0.iloc[0]


def test_a_request_over_the_limits_is_refused_whole(project, monkeypatch):
    model = mlflow.pyfunc.load_model(SERVED)
    photo = b64(sorted((project / "data" / "images").iterdir())[0].read_bytes())
    too_many = pd.DataFrame({"image": [photo] * (logged_model.MAX_IMAGES + 1)})
    refusal = r"request refused: 257 images, .* over the limit of 256 images or 64 MB per request"
    with pytest.raises(MlflowException, match=refusal + "; send the photographs in several"):
        model.predict(too_many)
    monkeypatch.setattr("retino.tracking.served.MAX_REQUEST_MB", len(photo) * 2.5 / 1e6)
    assert model.predict(pd.DataFrame({"image": [photo] * 2})).error.eq("").all()
    with pytest.raises(MlflowException, match="request refused: 3 images") as refused:
        model.predict(pd.DataFrame({"image": [photo] * 3}))
    assert refused.value.get_http_status_code() == 400


def log_checkpoint(root: Path, best: Path, name: str, outputs: list[str], paired: bool,
                   metadata: dict | None = None) -> str:  # fmt: skip
    """Log `best` as the train step logs its best.pt, in a run of its own; the run id."""
    with open_run(root, name=name, experiment="served-tests") as run:
        run.log_model(best, name, outputs, paired, metadata or {})
    return run.run_id


def test_a_paired_eyes_regression_model_with_tta_blends_as_retino_predict(project, tmp_path,
                                                                          capfd):  # fmt: skip
    best = save_checkpoint(tmp_path / "best.pt", project / "preprocessed", eye_weight=0.25,
                           thresholds=THRESHOLDS, train__loss="regression", eval__tta="flips",
                           eval__paired_eyes=True)  # fmt: skip
    run_id = log_checkpoint(project, best, "recipe", ["score"], paired=True)
    folder = tmp_path / "photos"  # both eyes of three patients, one eye of a fourth
    folder.mkdir()
    for path in sorted((project / "data" / "images").iterdir())[:7]:
        shutil.copy(path, folder)
    code, err = run_cli(["predict", folder, "--model", best, "--out", tmp_path / "p.csv"], capfd)
    assert code == 0, err
    expected = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert (expected.fellow != "").sum() == 6

    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/recipe")
    assert model.metadata.get_output_schema().input_names() == logged_model.answer_columns(
        ["score"], paired=True
    )
    images = [b64(Path(p).read_bytes()) for p in expected.path]
    # ids named as the files: paired by name, as retino predict pairs the files
    names = [Path(p).name for p in expected.path]
    by_name = model.predict(pd.DataFrame({"image": images, "id": names}))
    assert list(by_name.fellow) == [Path(p).name if p else "" for p in expected.fellow]
    np.testing.assert_allclose(by_name.score.to_numpy(float), expected.score, rtol=0, atol=1e-6)
    assert list(by_name.grade) == list(expected.grade)
    # ids that say nothing, the pairs in eye_pair: the same blend
    patients = [Path(p).stem.split("_")[0] for p in expected.path]
    by_key = model.predict(pd.DataFrame({"image": images, "id": list("abcdefg"),
                                         "eye_pair": patients}))  # fmt: skip
    np.testing.assert_allclose(by_key.score.to_numpy(float), expected.score, rtol=0, atol=1e-6)
    assert (by_key.fellow != "").sum() == 6
    # neither: each eye alone
    alone = model.predict(pd.DataFrame({"image": images}))
    assert (alone.fellow == "").all()
    assert alone.score[6] == by_key.score[6]  # the fourth patient's one eye: no fellow anyway
    assert not np.allclose(alone.score[:6].to_numpy(float), expected.score[:6])


def test_a_model_logged_by_an_older_retino_is_a_one_line_error(project, tmp_path, capfd):
    import mlflow.pytorch

    from retino.training.models import build_model

    # what retino logged before: the bare network, exported, taking normalised tensors
    # the client, not set_experiment: that would stay the process's active experiment, and
    # later tests' resumed runs (in another experiment) would be refused
    _, experiment = open_store(project, "served-tests")
    with mlflow.start_run(experiment_id=experiment) as old:
        mlflow.pytorch.log_model(
            build_model("resnet18").eval(), name="old", pip_requirements=["torch"],
            input_example=np.zeros((2, 3, 32, 32), np.float32), metadata={"config": {}},
        )  # fmt: skip
    best = save_checkpoint(tmp_path / "best.pt", project / "preprocessed")
    newer = log_checkpoint(project, best, "newer", PROBS, False, {logged_model.FORMAT_KEY: 2})
    image = sorted((project / "data" / "images").iterdir())[0]
    cases = [
        (f"runs:/{old.info.run_id}/old", "its model was logged by an older retino"),
        (f"runs:/{newer}/newer", "its model has format 2, this retino reads format 1"),
    ]
    for source, message in cases:
        code, err = run_cli(["predict", image, "--model", source], capfd)
        assert code == 2 and err.count("\n") == 1 and message in err, err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/invocations", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def split(ids: list[str], images: list[str]) -> bytes:
    data = [list(row) for row in zip(ids, images, strict=True)]
    return json.dumps({"dataframe_split": {"columns": ["id", "image"], "data": data}}).encode()


@pytest.mark.slow  # a real model server: ~10-20 s to start
def test_mlflow_models_serve_grades_camera_frames_and_survives_hostile_uploads(
    project, tmp_path, capfd
):
    synthesize(tmp_path / "frames", n_train=4, n_test=1, size=None, seed=5, frame=(640, 427))
    frames = sorted((tmp_path / "frames" / "images").iterdir())
    code, err = run_cli(["predict", *frames, "--model", SERVED, "--out", tmp_path / "p.csv"],
                        capfd)  # fmt: skip
    assert code == 0, err
    expected = pd.read_csv(tmp_path / "p.csv").assign(id=[p.name for p in frames])
    bad = hostile(tmp_path)
    ids = [p.name for p in frames[:3]] + list(bad) + [p.name for p in frames[3:]]
    images = {p.name: b64(p.read_bytes()) for p in frames} | {k: v[0] for k, v in bad.items()}

    with (
        open(tmp_path / "server.log", "w") as log,
        model_server(SERVED, free_port(), log=log) as server,
    ):
        launcher = psutil.Process(server.process.pid)  # mlflow's CLI; uvicorn is its child
        group = [launcher, *launcher.children(recursive=True)]
        assert any("uvicorn" in " ".join(p.cmdline()) for p in group)
        status, body = post(server.url, split(ids, [images[i] for i in ids]))
        assert status == 200, body
        check_hostile_rows(body["predictions"], bad)
        answer = pd.DataFrame(body["predictions"])
        assert list(answer.id) == ids
        graded = answer[answer.error == ""].merge(expected, on="id", suffixes=("", "_predict"))
        assert len(graded) == len(frames)
        assert (graded.grade == graded.grade_predict).all()
        assert (graded.referable == graded.referable_predict).all()
        for p in PROBS:  # JSON carries the 6 decimals retino predict writes
            np.testing.assert_allclose(graded[p], graded[f"{p}_predict"], rtol=0, atol=1e-6)
        assert f"{NAME}/1" in answer.model_version[0].split(", ")

        # a photograph per request, all at once: the server runs them as shared batches, and
        # each request gets its own photograph's answer
        bodies = [split([p.name], [images[p.name]]) for p in frames * 2]
        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda body: post(server.url, body), bodies))
        for p, (status, body) in zip(frames * 2, answers, strict=True):
            assert status == 200, body
            (row,) = body["predictions"]
            want = expected[expected.id == p.name].iloc[0]
            assert row["id"] == p.name and row["grade"] == want.grade
            assert [row[c] for c in PROBS] == pytest.approx(want[PROBS].tolist(), abs=1e-6)

        # over the stated limit: refused whole, with the reason; the server stays up
        huge = "A" * (logged_model.MAX_REQUEST_MB * 1_000_000 + 4)
        status, body = post(server.url, split(["huge"], [huge]))
        assert status == 400 and body["error_code"] == "BAD_REQUEST"
        assert "request refused: 1 image, 64.0 MB of base64, over the limit" in body["message"]
        status, body = post(server.url, split(ids[:1], [images[ids[0]]]))
        assert status == 200 and body["predictions"][0]["error"] == ""
    # stopped by its PID: the launcher's process group, uvicorn included, is gone (a SIGKILLed
    # orphan may take a moment to die)
    _, alive = psutil.wait_procs(group, timeout=10)
    assert all(p.status() == psutil.STATUS_ZOMBIE for p in alive), alive
