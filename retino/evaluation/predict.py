"""Grading photographs with a trained model: `retino predict`, the served model, Grad-CAMs,
`retino explain`.

A model source is a checkpoint file (models/best.pt), an MLflow URI (runs:/<id>/<model>,
models:/<name>/<version>, models:/<name>@<alias>) or the name of a finished run / DVC experiment
in the project's store. A checkpoint holds the weights, the config, the training mean/std and the
calibration (thresholds, eye blend); an MLflow source resolves to the model its run logged, which
carries that same best.pt. `grade_photos` is the one path from photographs (files, or a
request's bytes) to grades: they are preprocessed as the cache the model trained on was
(`retino.data.fundus.preprocess_image`: disc crop, resize, the same normalisation), then
`BatchTransform` with that mean/std and `engine.predict` with the model's flip TTA (`eval.tta`);
the calibration turns the outputs into grades, blending each eye with its fellow where the model
was trained with `eval.paired_eyes` and the fellow is among the photographs. The evaluate stage
runs the same `Predictor.outputs` and `Predictor.grade` on the cached test split.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from retino.config import Config, from_dict
from retino.data.dataset import make_loader
from retino.data.fundus import preprocess_image
from retino.data.images import ImageError, Source
from retino.data.transforms import BatchTransform
from retino.data.validation import cpu_workers
from retino.errors import RetinoError
from retino.evaluation.cam import GradCAM, overlay
from retino.grades import GRADE_NAMES, REFERABLE_GRADE
from retino.training import checkpoint
from retino.training.calibration import Calibration
from retino.training.engine import predict, resolve_device
from retino.training.eyes import fellow_index, pair_index
from retino.training.heads import CE, Head
from retino.training.models import build_model

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
PROBS = CE.columns  # p0..p4


class Photos(Dataset):
    """Photographs (files, or uploads' bytes) preprocessed as the cache was: (uint8 (3, S, S),
    index). One that cannot be read yields a blank image and index -1, so one bad photograph
    does not stop the others; `load` (in the process that read it) says why."""

    def __init__(self, sources: list[Source], size: int, normalize: str, max_pixels: int) -> None:
        self.sources, self.size = list(sources), size
        self.normalize, self.max_pixels = normalize, max_pixels

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            image = self.load(index)
        except ImageError:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), torch.tensor(-1)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), torch.tensor(index)

    def load(self, index: int) -> np.ndarray:
        """(S, S, 3) uint8 of photograph `index`, or ImageError naming it."""
        return preprocess_image(self.sources[index], self.size, self.normalize, self.max_pixels)


@dataclass
class Predictor:
    model: nn.Module
    cfg: Config
    transform: BatchTransform
    origin: str  # where the weights came from, for the user
    head: Head
    calibration: Calibration

    def photos(self, sources: list[Source]) -> Photos:
        """The photographs, preprocessed exactly as this model's training data was."""
        data = self.cfg.data
        return Photos(sources, data.image_size, self.cfg.preprocess.normalize, data.max_pixels)

    def outputs(
        self, loader: DataLoader, desc: str = "predict", progress: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(labels, outputs (N, K)) of a loader's images, with the model's flip TTA."""
        tta = self.cfg.eval.tta == "flips"
        return predict(self.model, loader, self.transform, desc, head=self.head, tta=tta,
                       progress=progress)  # fmt: skip

    def grade(
        self, outputs: np.ndarray, names: list[str], pair_keys: list[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(outputs blended with the fellow eyes', grades, each image's fellow index or -1) of
        the images called `names`: fellows by name (<patient>_<left|right>, eyes.fellow_index),
        or where `pair_keys` are given, the two images that share a key."""
        if self.calibration.eye_weight is None:
            fellow = np.full(len(names), -1)
        elif pair_keys is None:
            fellow = fellow_index(names)
        else:
            fellow = pair_index(pair_keys)
        outputs, grades = self.calibration.apply(self.head, outputs, fellow)
        return outputs, grades, fellow


def load_predictor(source: str, device: str = "auto") -> Predictor:
    """The model behind `source`, normalising its input as in training."""
    dev = resolve_device(device)
    state, origin = _load(source)
    try:
        cfg = from_dict(state.config)
    except RetinoError as err:  # a checkpoint of an older retino, with other keys
        raise RetinoError(f"{origin}: stored config: {err}; train it again") from None
    head = Head(cfg.train.loss)
    model = build_model(cfg.arch, outputs=head.outputs)  # the source holds every weight
    model.load_state_dict(state.model)
    mean, std = state.normalisation["mean"], state.normalisation["std"]
    # channels_last on the CPU too: oneDNN's inference kernels run it 10-20 % faster per image
    # (benchmarks/README.md, "Serving"); training keeps NCHW there, where it gained nothing
    transform = BatchTransform(mean, std, dev, None, channels_last=True)
    model = model.to(dev, memory_format=transform.memory_format).eval()
    calibration = Calibration(state.thresholds, state.eye_weight)
    return Predictor(model, cfg, transform, origin, head, calibration)


def _load(source: str) -> tuple[checkpoint.Checkpoint, str]:
    """(checkpoint, origin) of a checkpoint file or an MLflow source."""
    if Path(source).is_file():
        return checkpoint.load(Path(source)), source
    if not source.startswith(("runs:/", "models:/")) and ("/" in source or source.endswith(".pt")):
        raise RetinoError(
            f"{source}: checkpoint file not found; train one (`dvc repro train`) or give "
            "runs:/<id>/<model>, models:/<name>@<alias> or a DVC experiment name"
        )
    # these import mlflow (seconds): only MLflow sources pay for it
    from retino.tracking.registry import load_logged_model, resolve_run
    from retino.tracking.store import existing_store, project_root

    store = existing_store(project_root())
    run_id = resolve_run(store, source)
    return load_logged_model(store, run_id), f"{source} (MLflow run {run_id})"


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


def loader_for(dataset: Dataset, batch_size: int, workers: int) -> DataLoader:
    return make_loader(dataset, batch_size, False, workers, pin_memory=False)


def grade_photos(
    pred: Predictor,
    sources: list[Source],
    batch_size: int | None = None,
    workers: int = 0,
    pair_keys: list[str] | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[int, str]]:
    """Grade photographs (files, or uploads' bytes) as evaluation does: (graded, unreadable).

    graded: a row per readable photograph, indexed by its position in `sources`: name, grade,
    grade_name, p0..p4 (or score), referable (yes/no), and with a paired-eyes model `fellow`,
    the name of the photograph it was blended with ("" for none; see `Predictor.grade` for
    `pair_keys`). unreadable: the position of every other photograph, and why (one line).
    """
    photos = pred.photos(sources)
    batch_size = batch_size or pred.cfg.eval.batch_size
    # In this process (a server's, maybe): not make_loader, whose retain_freed_memory would keep
    # every request's peak memory for good (4 x 64 MB requests at a time: +1.7 GB, growing).
    loader = loader_for(photos, batch_size, workers) if workers else DataLoader(photos, batch_size)
    index, outputs = pred.outputs(loader, progress=progress)
    ok = index >= 0
    unreadable = {i: _read_error(photos, i) for i in np.flatnonzero(~ok).tolist()}
    position = np.flatnonzero(ok)
    names = [str(sources[i]) for i in position]
    keys = None if pair_keys is None else [pair_keys[i] for i in position]
    outputs, grade, fellow = pred.grade(outputs[ok], names, keys)
    # float64 before rounding: a float32 0.25 would read 0.25000000xxx as a Python float
    outputs = outputs.astype(np.float64).round(6)
    columns = {"name": names, "grade": grade, "grade_name": [GRADE_NAMES[g] for g in grade]}
    columns |= {name: outputs[:, j] for j, name in enumerate(pred.head.columns)}
    columns["referable"] = np.where(grade >= REFERABLE_GRADE, "yes", "no")
    if pred.calibration.eye_weight is not None:
        columns["fellow"] = [names[j] if j >= 0 else "" for j in fellow]
    return pd.DataFrame(columns, index=position), unreadable


def predict_images(
    pred: Predictor, paths: list[Path], batch_size: int | None = None
) -> tuple[pd.DataFrame, list[tuple[Path, str]]]:
    """`retino predict`: one row per readable image (path, then as `grade_photos`), and (path,
    error) for each image that could not be read."""
    batch_size = batch_size or pred.cfg.eval.batch_size
    # photographs are decoded here: workers pay for themselves from the second batch on
    workers = min(cpu_workers(), 8) if len(paths) > batch_size else 0
    graded, unreadable = grade_photos(pred, paths, batch_size, workers)
    table = graded.rename(columns={"name": "path"}).reset_index(drop=True)
    return table, [(paths[i], error) for i, error in unreadable.items()]


def _read_error(photos: Photos, index: int) -> str:
    """Why photograph `index` could not be read (read again here: the worker that failed on it
    cannot send its exception back with the batch)."""
    try:
        photos.load(index)
    except ImageError as err:
        return str(err)
    return "could not be read while predicting"  # the file changed in between


def write_cams(
    pred: Predictor,
    images: Callable[[int], np.ndarray],
    grades: np.ndarray,
    captions: list[str],
    files: list[Path],
    batch_size: int | None = None,
) -> None:
    """files[i]: the Grad-CAM (layer4) of grades[i] over images(i), a preprocessed (S, S, 3)
    uint8 square, captioned. A regression model's map is that of its score: where the evidence
    for a higher grade lies. The map explains the network's own output for the image, without
    flips or the fellow eye."""
    step = batch_size or pred.cfg.eval.batch_size
    targets = pred.head.cam_targets(grades)
    with GradCAM(pred.model, pred.model.layer4) as cam:
        for start in tqdm(range(0, len(files), step), desc="grad-cam", leave=False, disable=None):
            chunk = [images(i) for i in range(start, min(start + step, len(files)))]
            batch = torch.from_numpy(np.stack(chunk).transpose(0, 3, 1, 2).copy())
            target = torch.tensor(targets[start : start + len(chunk)])
            for k, heat in enumerate(cam(pred.transform(batch), target)):
                # fast zlib level: 4x quicker than the default, files ~10% larger
                out = overlay(chunk[k], heat, captions[start + k])
                out.save(files[start + k], "PNG", compress_level=1)


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
    rows = zip(table.grade, table.grade_name, _strength(table), strict=True)
    captions = [f"{grade} {name}  {strength}" for grade, name, strength in rows]
    photos = pred.photos([Path(p) for p in table.path])
    write_cams(pred, photos.load, table.grade.to_numpy(), captions, files, batch_size)
    return files


def _strength(table: pd.DataFrame) -> list[str]:
    """How each row's grade came out, for a caption: its probability, or the score."""
    if "score" in table:  # a regression model's table
        return [f"score {s:.2f}" for s in table.score]
    return [f"{p:.0%}" for p in table[PROBS].to_numpy().max(1)]


def _confidence(table: pd.DataFrame) -> np.ndarray:
    """How sure each row's predicted grade is: its probability, or how near the score is."""
    if "score" in table:
        return -np.abs(table.score.to_numpy() - table.predicted.to_numpy())
    return table[PROBS].to_numpy().max(1)


def gallery_rows(table: pd.DataFrame, per_grade: int = 1) -> pd.DataFrame:
    """From a predictions table (image, label, predicted, p0..p4 or score): per true grade
    the `per_grade` most confident correct and the `per_grade` most confidently wrong rows."""
    table = table.assign(confidence=_confidence(table), correct=table.label == table.predicted)
    ranked = table.sort_values("confidence", ascending=False, kind="stable")
    picked = ranked.groupby(["label", "correct"]).head(per_grade)
    return picked.sort_values(["label", "correct", "confidence"], ascending=[True, False, False])


def write_gallery(
    pred: Predictor, table: pd.DataFrame, images: np.ndarray, out_dir: Path, per_grade: int = 1
) -> list[Path]:
    """Grad-CAMs of `gallery_rows(table)` for the predicted grade, named
    grade<true>_<correct|wrong>_<image>.png; images[i] is the preprocessed image of table row i
    (a cached split)."""
    rows = gallery_rows(table, per_grade)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, captions = [], []
    for r, strength in zip(rows.itertuples(), _strength(rows), strict=True):
        verdict = "correct" if r.correct else "wrong"
        files.append(out_dir / f"grade{r.label}_{verdict}_{Path(r.image).stem}.png")
        truth = f"true {r.label} {GRADE_NAMES[r.label]}"
        captions.append(f"{truth}\npredicted {r.predicted} {GRADE_NAMES[r.predicted]}  {strength}")
    picked = rows.index.to_numpy()  # positions in `table`, hence in `images`
    write_cams(pred, lambda k: images[picked[k]], rows.predicted.to_numpy(), captions, files)
    return files
