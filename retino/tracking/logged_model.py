"""The model a run logs: photographs in, grades out, as `mlflow models serve` answers them.

The train step logs best.pt (weights, config, mean/std, thresholds, eye weight) as the artifact
of an MLflow pyfunc written as code (`model_code.py`, no pickle). Loading it builds the same
`Predictor` as `retino predict --model models/best.pt`, and grading a request runs the same
`grade_photos` (retino.tracking.served). This module holds what the model declares: its format,
its signature, its limits; it stays light because the train stage imports it.

Request (a DataFrame: JSON `dataframe_split` or `dataframe_records`), a row per photograph:
    image     base64 JPEG or PNG bytes (a `data:image/...;base64,` prefix is accepted)
    id        optional: returned with the row and naming it in errors. As with file names,
              ids <patient>_left and <patient>_right are one patient's eyes
    eye_pair  optional: the two rows with the same value are one patient's eyes (instead of
              the ids); a paired-eyes model blends them, other models ignore it
Answer, a row per photograph in the request's order:
    id, grade, grade_name, p0..p4 (regression: score), referable (yes/no), with a paired-eyes
    model fellow (the id blended with, "" for none), error ("" when graded; otherwise the
    reason in one line and the columns before it null), and run_id, model_id, model_version
    (the registered versions of this model, "" for none): which model answered.
A request over MAX_REQUEST_MB of base64 text or MAX_IMAGES rows is refused whole (HTTP 400).
"""

from pathlib import Path

FORMAT = 1  # `retino_model` in the model's metadata: the version of the interface above
FORMAT_KEY = "retino_model"
CHECKPOINT = "checkpoint"  # the artifact's name: best.pt
MODEL_CODE = Path(__file__).with_name("model_code.py")
MAX_REQUEST_MB = 64  # ~45 EyePACS photographs (~1 MB each, 4/3 of that as base64)
MAX_IMAGES = 256
REQUEST = ("image", "id", "eye_pair")
IDENTITY = ("run_id", "model_id", "model_version")


def answer_columns(outputs: list[str], paired: bool) -> list[str]:
    """The answer's columns for a model whose outputs are `outputs` (p0..p4, or score)."""
    fellow = ["fellow"] if paired else []
    return ["id", "grade", "grade_name", *outputs, "referable", *fellow, "error", *IDENTITY]


def signature(outputs: list[str], paired: bool):
    """The MLflow signature: what the model takes and answers (null where `error` says why)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    types = {"grade": "long", **dict.fromkeys(outputs, "double")}
    graded = {"grade", "grade_name", *outputs, "referable"}  # null in a row that has an error
    inputs = [ColSpec("string", "image"), ColSpec("string", "id", required=False),
              ColSpec("string", "eye_pair", required=False)]  # fmt: skip
    answer = [ColSpec(types.get(name, "string"), name, required=name not in graded)
              for name in answer_columns(outputs, paired)]  # fmt: skip
    return ModelSignature(Schema(inputs), Schema(answer))
