"""Grading photographs with a trained model: `retino predict`, Grad-CAMs, `retino explain`.

A model source is a checkpoint file (models/best.pt), an MLflow URI (runs:/<id>/model,
models:/<name>/<version>, models:/<name>@<alias>) or the name of a finished run / DVC experiment
in the project's store. MLflow sources resolve to the run's checkpoints/best.pt: like the file,
it holds the weights, the config and the training mean/std. Images take the evaluation path:
`load_image` (resize, centre crop), `BatchTransform` with that mean/std, `engine.predict`.
"""

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from retino.config import Config, from_dict
from retino.data.dataset import FundusDataset, default_workers, load_image, make_loader
from retino.data.transforms import BatchTransform
from retino.errors import RetinoError
from retino.evaluation.cam import GradCAM, overlay
from retino.grades import GRADE_NAMES, REFERABLE_GRADE
from retino.training import checkpoint
from retino.training.engine import predict, resolve_device
from retino.training.models import build_model

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
CHECKPOINT_ARTIFACT = "checkpoints/best.pt"  # logged by retino.training.train beside the model
PROBS = [f"p{g}" for g in range(len(GRADE_NAMES))]


@dataclass
class Predictor:
    model: nn.Module
    cfg: Config
    transform: BatchTransform
    origin: str  # where the weights came from, for the user

    @property
    def image_size(self) -> int:
        return self.cfg.data.image_size


def load_predictor(source: str, device: str = "auto") -> Predictor:
    """The model behind `source`, normalising its input as in training."""
    dev = resolve_device(device)
    with _checkpoint_file(source) as (path, origin):
        state = checkpoint.load(path, origin)
    try:
        cfg = from_dict(state.config)
    except RetinoError as err:  # a checkpoint of an older retino, with other keys
        raise RetinoError(f"{origin}: stored config: {err}; train it again") from None
    model = build_model(cfg.arch)  # the checkpoint holds every weight
    model.load_state_dict(state.model)
    mean, std = state.normalisation["mean"], state.normalisation["std"]
    transform = BatchTransform(mean, std, dev, None, dev.type == "cuda")
    return Predictor(model.to(dev).eval(), cfg, transform, origin)


@contextlib.contextmanager
def _checkpoint_file(source: str) -> Iterator[tuple[Path, str]]:
    if Path(source).is_file():
        yield Path(source), source
        return
    if not source.startswith(("runs:/", "models:/")) and ("/" in source or source.endswith(".pt")):
        raise RetinoError(
            f"{source}: checkpoint file not found; train one (`dvc repro train`) or give "
            "runs:/<id>/model, models:/<name>@<alias> or a DVC experiment name"
        )
    # these import mlflow (seconds): only MLflow sources pay for it
    from retino.tracking.queries import download_artifact
    from retino.tracking.registry import resolve_run
    from retino.tracking.store import existing_store, project_root

    store = existing_store(project_root())
    run_id = resolve_run(store, source)
    with tempfile.TemporaryDirectory() as tmp:
        path = download_artifact(store, run_id, CHECKPOINT_ARTIFACT, Path(tmp))
        yield path, f"{source} (MLflow run {run_id})"


def expand_inputs(items: list[Path]) -> list[Path]:
    """Files as given; folders replaced by their .jpeg/.jpg/.png files, sorted."""
    paths: list[Path] = []
    for item in items:
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)  # a missing file is reported with the unreadable ones
    if not paths:
        raise RetinoError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {', '.join(map(str, items))}")
    return paths


class _Tolerant(Dataset):
    """FundusDataset over image files, labelled with their index; a file that cannot be read
    yields a blank image and index -1, so one bad file does not stop the others."""

    def __init__(self, paths: list[Path], size: int) -> None:
        table = pd.DataFrame({"path": [str(p) for p in paths], "label": range(len(paths))})
        self.images = FundusDataset(table, Path(), size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return self.images[index]
        except Exception:  # decoders raise many types; the error is re-read for the report
            size = self.images.image_size
            return torch.zeros(3, size, size, dtype=torch.uint8), torch.tensor(-1)


def loader_for(dataset: Dataset, batch_size: int) -> DataLoader:
    workers = default_workers(-1) if len(dataset) > batch_size else 0  # pays from batch two on
    return make_loader(dataset, batch_size, False, workers, pin_memory=False)


def predict_images(
    pred: Predictor, paths: list[Path], batch_size: int | None = None
) -> tuple[pd.DataFrame, list[tuple[Path, str]]]:
    """One row per readable image (path, grade, grade_name, p0..p4, referable), and
    (path, error) for each image that could not be read."""
    dataset = _Tolerant(paths, pred.image_size)
    loader = loader_for(dataset, batch_size or pred.cfg.eval.batch_size)
    index, probs = predict(pred.model, loader, pred.transform)
    ok = index >= 0
    failed = [
        (p, _read_error(p, pred.image_size)) for p, good in zip(paths, ok, strict=True) if not good
    ]
    grade = probs[ok].argmax(1)
    table = pd.DataFrame(
        {
            "path": [str(p) for p, good in zip(paths, ok, strict=True) if good],
            "grade": grade,
            "grade_name": [GRADE_NAMES[g] for g in grade],
        }
    )
    table[PROBS] = probs[ok].round(6)
    table["referable"] = np.where(grade >= REFERABLE_GRADE, "yes", "no")
    return table, failed


def _read_error(path: Path, size: int) -> str:
    try:
        load_image(str(path), size)
    except Exception as err:
        message = str(err).strip().splitlines()
        return f"{type(err).__name__}: {message[0]}" if message else type(err).__name__
    return "could not be read while predicting"  # the file changed in between


def write_cams(
    pred: Predictor,
    images: list[Path],
    grades: np.ndarray,
    captions: list[str],
    files: list[Path],
    batch_size: int | None = None,
) -> None:
    """files[i]: the Grad-CAM (layer4) of grades[i] over photograph images[i], captioned."""
    table = pd.DataFrame({"path": [str(p) for p in images], "label": grades})
    dataset = FundusDataset(table, Path(), pred.image_size)
    loader = loader_for(dataset, batch_size or pred.cfg.eval.batch_size)
    done = 0
    with GradCAM(pred.model, pred.model.layer4) as cam:
        for batch, target in tqdm(loader, desc="grad-cam", leave=False, disable=None):
            for heat in cam(pred.transform(batch), target):
                with Image.open(images[done]) as photo:
                    # fast zlib level: 4x quicker than the default, files ~10% larger
                    overlay(photo, heat, captions[done]).save(files[done], "PNG", compress_level=1)
                done += 1


def write_prediction_cams(
    pred: Predictor, table: pd.DataFrame, out_dir: Path, batch_size: int | None = None
) -> list[Path]:
    """A PNG per row of a `predict_images` table, named after the image, for its grade."""
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    files = []
    for path in table["path"]:
        stem, name, k = Path(path).stem, Path(path).stem, 1
        while name in used:  # the same file name in two folders
            k += 1
            name = f"{stem}-{k}"
        used.add(name)
        files.append(out_dir / f"{name}.png")
    prob = table[PROBS].to_numpy().max(1)
    rows = zip(table.grade, table.grade_name, prob, strict=True)
    captions = [f"{grade} {name}  {p:.0%}" for grade, name, p in rows]
    images = [Path(p) for p in table.path]
    write_cams(pred, images, table.grade.to_numpy(), captions, files, batch_size)
    return files


def gallery_rows(table: pd.DataFrame, per_grade: int = 1) -> pd.DataFrame:
    """From a predictions table (image, label, predicted, p0..p4): per true grade
    the `per_grade` most confident correct and the `per_grade` most confidently wrong rows."""
    table = table.assign(
        confidence=table[PROBS].to_numpy().max(1), correct=table.label == table.predicted
    )
    ranked = table.sort_values("confidence", ascending=False, kind="stable")
    picked = ranked.groupby(["label", "correct"]).head(per_grade)
    return picked.sort_values(["label", "correct", "confidence"], ascending=[True, False, False])


def write_gallery(
    pred: Predictor, table: pd.DataFrame, data_root: Path, out_dir: Path, per_grade: int = 1
) -> list[Path]:
    """Grad-CAMs of `gallery_rows(table)` for the predicted grade, named
    grade<true>_<correct|wrong>_<image>.png."""
    rows = gallery_rows(table, per_grade)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, captions = [], []
    for r in rows.itertuples():
        verdict = "correct" if r.correct else "wrong"
        files.append(out_dir / f"grade{r.label}_{verdict}_{Path(r.image).stem}.png")
        truth = f"true {r.label} {GRADE_NAMES[r.label]}"
        captions.append(
            f"{truth}\npredicted {r.predicted} {GRADE_NAMES[r.predicted]}  {r.confidence:.0%}"
        )
    write_cams(
        pred, [data_root / p for p in rows.image], rows.predicted.to_numpy(), captions, files
    )
    return files
