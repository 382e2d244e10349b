"""Data sets of synthetic photographs: how many images of each grade, which patient and eye
each is, and the rendering of them all (in a process pool when there are many)."""

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from retino.errors import RetinoError
from retino.grades import NUM_CLASSES
from retino.synth import checks
from retino.synth.layouts import LAYOUTS, Rows, place
from retino.synth.preview import write_preview
from retino.synth.render import MAX_SIZE, MIN_SIZE, paint
from retino.synth.sensor import expose

GRADE_PRIORS = (0.735, 0.07, 0.15, 0.025, 0.02)  # EyePACS-like priors for grades 0..4

_DEFAULT_SIZE = 256
_SPLITS = ("train", "test")
_FRAME_RENDER_MAX = 1024  # frames upscale a render of at most this side: decode cost, not detail
_PREVIEW_MAX = 256  # contact-sheet tiles with --frame
_PARALLEL_MIN_IMAGES = 64  # below this, a process pool costs more than it saves

Plan = dict[str, Rows]  # split -> [(image name, grade), ...]


def _quota(n: int) -> list[int]:
    """Image counts per grade: largest-remainder rounding of the priors, >= 1 each if n >= 5."""
    raw = [p * n for p in GRADE_PRIORS]
    counts = [int(x) for x in raw]
    order = sorted(range(NUM_CLASSES), key=lambda g: (raw[g] - counts[g], -g), reverse=True)
    for g in order[: n - sum(counts)]:
        counts[g] += 1
    if n >= NUM_CLASSES:
        for g in range(NUM_CLASSES):
            while counts[g] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[g] += 1
    return counts


def _plan(n_train: int, n_test: int, seed: int) -> Plan:
    """Image names and grades per split (sorted by patient id, left eye before right)."""
    rng = np.random.default_rng([seed, 7919])
    sizes = {"train": n_train, "test": n_test}
    n_patients = {s: (k + 1) // 2 for s, k in sizes.items()}
    total = sum(n_patients.values())
    ids = rng.choice(np.arange(10, 10 + 3 * total + 20), size=total, replace=False)
    split_ids = {"train": ids[: n_patients["train"]], "test": ids[n_patients["train"] :]}
    plan: Plan = {}
    for split, k in sizes.items():
        groups = _pair_eyes(rng, k)
        order = rng.permutation(len(groups))
        rows: list[tuple[str, int]] = []
        for pid, gi in zip(np.sort(split_ids[split]), order, strict=True):
            left, right = groups[gi]
            if left is not None:
                rows.append((f"{pid}_left", left))
            if right is not None:
                rows.append((f"{pid}_right", right))
        plan[split] = rows
    return plan


def _pair_eyes(rng: np.random.Generator, k: int) -> list[tuple[int | None, int | None]]:
    """The quota's `k` grades as (left, right) eye pairs of similar severity, as in real
    patients; with `k` odd, one patient has a single eye (the other is None)."""
    grades = np.repeat(np.arange(NUM_CLASSES), _quota(k))
    rng.shuffle(grades)
    single = None
    if k % 2:
        j = int(rng.integers(k))
        single = int(grades[j])
        grades = np.delete(grades, j)
    keys = grades + rng.normal(0.0, 0.9, grades.size)  # pair images by noisy severity
    paired = grades[np.argsort(keys, kind="stable")].reshape(-1, 2)
    groups: list[tuple[int | None, int | None]] = []
    for a, b in paired:
        groups.append((int(a), int(b)) if rng.random() < 0.5 else (int(b), int(a)))
    if single is not None:
        groups.append((single, None) if rng.random() < 0.5 else (None, single))
    return groups


class _Job(NamedTuple):
    seed: int
    split_idx: int
    index: int
    name: str
    grade: int
    size: int
    frame: tuple[int, int] | None
    path: str


def _render_job(job: _Job) -> None:
    rng = np.random.default_rng([job.seed, job.split_idx, job.index])
    eye = "left" if job.name.endswith("_left") else "right"
    img, view = paint(job.grade, job.size, rng, eye)
    # frame and quality are drawn after the render: one picture in every layout and frame
    if job.frame is not None:
        img = expose(img, view, job.frame, rng)
    if job.path.endswith(".png"):  # level 1: 4x faster than the default on noisy frames
        img.save(job.path, format="PNG", compress_level=1)
        return
    quality = int(rng.integers(75, 96) if job.frame is None else rng.integers(87, 94))
    img.save(job.path, format="JPEG", quality=quality, optimize=False, progressive=False)


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _run(jobs: list[_Job]) -> None:
    workers = min(_available_cpus(), 8, len(jobs) // 16 + 1)
    if workers > 1 and len(jobs) >= _PARALLEL_MIN_IMAGES:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(_render_job, jobs, chunksize=16):
                pass
    else:
        for job in jobs:
            _render_job(job)


def synthesize(
    out: Path,
    n_train: int,
    n_test: int,
    size: int | None,
    seed: int,
    preview: Path | None = None,
    *,
    frame: tuple[int, int] | None = None,
    layout: str = "lab",
) -> dict[str, list[int]]:
    """Write a data set into the new or empty folder `out`; return grade counts per split.

    `layout` is ``lab``, ``kaggle`` or ``aptos`` (see `retino.synth.layouts`); the images and
    grades are the same in each.  Both eyes of a patient are in the same split; with an odd
    count one patient has a single eye.  Grades follow `GRADE_PRIORS` by quota (every grade at
    least once when a split has >= 5 images).  Images are `size` pixels square (default 256),
    or with `frame` = (width, height) camera-sized photographs around a render of side `size`
    (default: the frame height, at most 1024).  Identical arguments give byte-identical files.
    Returns ``{"train": [c0, .., c4], "test": [...]}`` (APTOS: ``train`` only).  Raises
    `RetinoError`, naming the command-line option, for bad arguments.
    """
    n_train = checks.whole_number("--train", n_train, 1)
    n_test = checks.whole_number("--test", n_test, 1)
    seed = checks.whole_number("--seed", seed, 0)
    if layout not in LAYOUTS:
        raise RetinoError(f"--layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    if frame is not None:
        frame = checks.check_frame(frame)
    if size is None:
        size = _DEFAULT_SIZE if frame is None else min(_FRAME_RENDER_MAX, frame[1])
    size = checks.whole_number("--size", size, MIN_SIZE, MAX_SIZE, " pixels")
    out = Path(out)
    preview = Path(preview) if preview is not None else None
    checks.check_output(out, preview)

    plan = _plan(n_train, n_test, seed)
    placement = place(layout, out, plan, seed)
    folders = {out} | {p.parent for paths in placement.paths.values() for p in paths}
    try:
        for folder in sorted(folders):
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RetinoError(f"cannot create {err.filename}: {err.strerror}") from None
    jobs = []
    for si, split in enumerate(_SPLITS):
        rows = zip(plan[split], placement.paths[split], strict=True)
        for i, ((name, grade), path) in enumerate(rows):
            jobs.append(_Job(seed, si, i, name, grade, size, frame, str(path)))
    _run(jobs)
    for table, text in placement.tables.items():
        table.write_text(text)
    if preview is not None:
        try:
            write_preview(preview, size if frame is None else min(size, _PREVIEW_MAX), seed)
        except OSError as err:
            raise RetinoError(f"cannot write --preview {preview}: {err.strerror}") from None
    return placement.counts
