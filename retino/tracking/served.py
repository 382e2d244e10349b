"""What runs when a logged model loads (`mlflow models serve`, `mlflow.pyfunc.load_model`): each
request's photographs graded by `grade_photos`, as `retino predict` grades files.

Uploads are read as files are (retino.data.images: header first, pixel limit, 8-bit only, strict
JPEG decoding), JPEG and PNG only. A row that cannot be graded (no base64, not an image, a
truncated JPEG, a decompression bomb, a 16-bit PNG, an empty string) gets its reason in `error`;
the other rows are graded. A request over the limits (retino.tracking.logged_model) is refused
whole before any image is decoded. The request and answer are described there.
"""

import binascii
import dataclasses
import logging
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST

from retino.data.images import Upload
from retino.evaluation.predict import Predictor, grade_photos, load_predictor
from retino.tracking.batching import SharedForward
from retino.tracking.logged_model import CHECKPOINT, IDENTITY, MAX_IMAGES, MAX_REQUEST_MB

_logger = logging.getLogger(__name__)


class GradingModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        checkpoint = Path(context.artifacts[CHECKPOINT])
        pred = load_predictor(str(checkpoint))
        # the server grades requests in threads: concurrent ones share the network's batches
        shared = SharedForward(pred.model, pred.cfg.eval.batch_size)
        self.predictor = dataclasses.replace(pred, model=shared)
        self.identity = identity(checkpoint.parents[1])  # <model>/artifacts/best.pt

    # a DataFrame hint: MLflow infers no signature from it (the logged one stands)
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return grade_request(self.predictor, model_input, self.identity)


def grade_request(pred: Predictor, frame: pd.DataFrame, model: dict[str, str]) -> pd.DataFrame:
    """The answer to one request (see retino.tracking.logged_model), `model` its identity."""
    if "image" not in frame:
        raise MlflowException("the request has no `image` column", error_code=BAD_REQUEST)
    _check_limits(frame["image"])
    ids = frame["id"] if "id" in frame else pd.Series([None] * len(frame))
    names = [str(v) if _given(v) else f"row {i}" for i, v in enumerate(ids)]
    uploads, errors = [], {}
    for i, (name, text) in enumerate(zip(names, frame["image"], strict=True)):
        try:
            uploads.append(Upload(name, _from_base64(text)))
        except ValueError as err:
            errors[i] = f"image {name}: {err}"
            uploads.append(Upload(name, b""))
    keys = None
    if "eye_pair" in frame:
        keys = [str(v) if _given(v) and i not in errors else "" for i, v in
                enumerate(frame["eye_pair"])]  # fmt: skip
    graded, unreadable = grade_photos(pred, uploads, pair_keys=keys, progress=False)
    columns = [c for c in graded.columns if c != "name"]  # the request's id stands for it
    # native ints, floats and strings per row; an ungraded row's are JSON null (NaN is no JSON)
    rows = dict(zip(graded.index, graded[columns].itertuples(index=False, name=None), strict=True))
    ungraded, which = (None,) * len(columns), [model[key] for key in IDENTITY]
    answer = [
        (name, *rows.get(i, ungraded), errors.get(i) or unreadable.get(i, ""), *which)
        for i, name in enumerate(names)
    ]
    return pd.DataFrame(answer, columns=["id", *columns, "error", *IDENTITY], dtype=object)


def _check_limits(images: pd.Series) -> None:
    size = sum(len(v) for v in images if isinstance(v, str))
    if len(images) > MAX_IMAGES or size > MAX_REQUEST_MB * 1e6:
        count = f"{len(images)} image" + ("s" if len(images) != 1 else "")
        raise MlflowException(
            f"request refused: {count}, {size / 1e6:.1f} MB of base64, over the limit of "
            f"{MAX_IMAGES} images or {MAX_REQUEST_MB} MB per request; send the photographs in "
            "several requests",
            error_code=BAD_REQUEST,
        )


def _given(value: object) -> bool:
    """Whether the client set a value: neither null nor ""."""
    return not pd.isna(value) and str(value) != ""


def _from_base64(text: object) -> bytes:
    """The bytes of a base64 text, with or without a data-URL prefix and line breaks."""
    if not isinstance(text, str):
        raise ValueError("no base64 text (null or not a string); send the photograph's bytes")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    for attempt in (text, "".join(text.split())):  # line breaks are rare: removed on demand
        try:
            return binascii.a2b_base64(attempt, strict_mode=True)
        except ValueError:  # binascii.Error, or a character that is not ASCII
            continue
    raise ValueError("not valid base64; send the photograph's bytes base64-encoded")


def identity(model_dir: Path) -> dict[str, str]:
    """run_id, model_id and model_version (its registered versions, e.g. "retino-dr/2", where
    the store that registered them is at hand; "" otherwise) of the model in `model_dir`."""
    model = mlflow.models.Model.load(str(model_dir))
    versions = ""
    uri = mlflow.get_tracking_uri()
    # a served folder has no store beside it: asking would create an empty SQLite file
    if model.run_id and not (uri.startswith("sqlite:///")
                             and not Path(uri.removeprefix("sqlite:///")).is_file()):  # fmt: skip
        try:
            found = mlflow.MlflowClient(uri).search_model_versions(f"run_id = '{model.run_id}'")
            versions = ", ".join(f"{v.name}/{v.version}" for v in found
                                 if v.model_id in (None, model.model_id))  # fmt: skip
        except MlflowException as err:
            _logger.warning("model_version left empty: %s", err.message.splitlines()[0])
    return {"run_id": model.run_id or "", "model_id": model.model_id or "",
            "model_version": versions}  # fmt: skip
