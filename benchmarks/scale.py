"""`retino bench scale`: how each stage's cost grows with the dataset, how logging and `retino
compare` grow with the runs in the store, and `retino validate` on camera-sized frames against
the check it replaced — all in one run, so ratios compare like with like.

The data is written by `retino synth` into a temporary folder (so every stage finds it in the
page cache):
- `--sizes`: lab-layout datasets of N small images (`--px`), a fifth of them test: validate (the
  old check and today's), prepare, preprocess at `--train-px`, one train epoch (`--arch`,
  `--batch-size`) and evaluate;
- `--frames` camera-sized photographs (`--frame`): validate (old and today's), prepare,
  preprocess at 256 and 512 px, the sizes the README's EyePACS figures are for;
- one MLflow store, filled up to each count of `--runs`: the time to log a run, then
  `retino compare` over all of them.

Each measurement runs in a fresh process (benchmarks/stages.py), so its peak memory is its own
and its imports are not in its time ("process s" has the whole process: interpreter, imports,
work). This process imports neither torch nor mlflow. The machine may be shared: each stage
runs on all the datasets in turn, so that the sizes compared are measured close together, and
`--repeat` rounds keep the fastest of each measurement; every row shows the load it met.

stdout: the tables, then one JSON line (always the last). Progress goes to stderr.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from benchmarks.machine import cpu_description
from benchmarks.stages import config
from retino.errors import RetinoError
from retino.synth import synthesize
from retino.synth.checks import parse_frame

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ("validate", "prepare", "preprocess", "train", "evaluate")  # data stages, in order
NEEDS = {"preprocess": "prepare", "train": "preprocess", "evaluate": "preprocess"}
FRAME_SIZES = (256, 512)  # preprocess of the frames: the README's cache sizes


@dataclass(frozen=True)
class Row:
    dataset: str
    stage: str
    items: int  # images, or runs for the store's rows
    seconds: float  # the work alone
    cpu_seconds: float  # its CPU time, workers included
    process_seconds: float  # the whole child process: start-up, imports, set-up, work
    peak_mb: float  # the child's peak resident memory
    grown_mb: float  # how much of it the work added to what start-up and set-up had reached
    worker_mb: float  # the largest worker process's peak; 0: no workers
    load: float  # 1-minute load average as the measurement started
    device: str | None  # where torch ran, for the stages that use it

    @property
    def ms_per_item(self) -> float:
        return 1000 * self.seconds / self.items

    @property
    def cpu_ms_per_item(self) -> float:
        return 1000 * self.cpu_seconds / self.items


@dataclass(frozen=True)
class Dataset:
    name: str
    root: Path
    work: Path  # prepared tables and caches
    cache_sizes: tuple[int, ...]  # preprocess at each
    model: dict | None  # train and evaluate on the first cache, with these args


def bench_scale(
    sizes: list[int],
    px: int,
    frames: int,
    frame: str,
    runs: list[int],
    train_px: int,
    arch: str,
    batch_size: int,
    stages: list[str],
    repeat: int = 1,
) -> dict:
    wanted = set(stages)
    for stage in stages:  # a stage brings the ones it reads from
        while stage in NEEDS:
            stage = NEEDS[stage]
            wanted.add(stage)
    frame_size = parse_frame(frame)
    model = {"size": train_px, "arch": arch, "batch_size": batch_size}
    config(model)  # a bad arch, size or batch size fails before minutes of data generation
    started, load = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.getloadavg()

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="retino-scale-") as tmp:
        tmp = Path(tmp)
        datasets = []
        for n in sizes if wanted - {"compare"} else []:
            _say(f"writing {n} images of {px} px")
            root = tmp / f"n{n}"
            synthesize(root, n - max(1, n // 5), max(1, n // 5), px, seed=n)
            datasets.append(Dataset(f"{n} x {px} px", root, tmp / f"work{n}", (train_px,), model))
        if frames and wanted - {"compare"}:
            _say(f"writing {frames} frames of {frame}")
            root, test = tmp / "frames", max(1, frames // 5)
            synthesize(root, frames - test, test, None, seed=1, frame=frame_size)
            name = f"{frames} x {frame_size[0]}x{frame_size[1]}"
            datasets.append(Dataset(name, root, tmp / "work-frames", FRAME_SIZES, None))
        rows += _dataset_rows(datasets, wanted, repeat)
        if "compare" in wanted:
            rows += _store_rows(tmp / "store", sorted(set(runs)))
    return _report(rows, sizes, px, frames, frame_size, started, load)


def _dataset_rows(datasets: list[Dataset], wanted: set[str], repeat: int) -> list[Row]:
    """Every stage on every dataset, `repeat` rounds, the fastest of each kept. In a round each
    stage runs on every dataset in turn, so that its sizes are measured close together in time,
    under much the same load from other work. Rows come back by dataset, in pipeline order."""
    steps = {ds.name: _steps(ds, wanted) for ds in datasets}
    plan = [(ds.name, *measure) for step in PIPELINE for ds in datasets
            for measure in steps[ds.name].get(step, [])]  # fmt: skip
    best: dict[tuple[str, str], Row] = {}
    for _ in range(repeat):
        for name, stage, label, args in plan:
            row = _measure(stage, label, name, args)
            if (name, label) not in best or row.seconds < best[name, label].seconds:
                best[name, label] = row
    return [best[name, label] for name in steps for _, label, _ in chain(*steps[name].values())]


def _steps(ds: Dataset, wanted: set[str]) -> dict[str, list[tuple[str, str, dict]]]:
    """Pipeline step -> its measurements on one dataset: (stage, label, args)."""
    common = {"data": str(ds.root), "work": str(ds.work)}
    steps: dict[str, list[tuple[str, str, dict]]] = {}
    if "validate" in wanted:  # the two checks back to back: same data, same page cache
        steps["validate"] = [("validate-old", "validate (old)", common),
                             ("validate", "validate", common)]  # fmt: skip
    if "prepare" in wanted:
        steps["prepare"] = [("prepare", "prepare", common)]
    if "preprocess" in wanted:
        steps["preprocess"] = [
            ("preprocess", f"preprocess {px} px", {**common, "size": px, "cache": f"cache{px}"})
            for px in ds.cache_sizes
        ]
    if ds.model:
        args = {**common, **ds.model, "cache": f"cache{ds.model['size']}"}
        what = f"{ds.model['arch']} {ds.model['size']} px"
        for stage, label in (("train", f"train epoch {what}"), ("evaluate", f"evaluate {what}")):
            if stage in wanted:
                steps[stage] = [(stage, label, args)]
    return steps


def _store_rows(store: Path, runs: list[int]) -> list[Row]:
    """Fill one store up to each count of runs: log the runs it lacks, then compare them all."""
    rows, logged = [], 0
    for total in runs:
        name = f"store of {total} {_runs(total)}"
        args = {"store": str(store), "first": logged, "count": total - logged}
        rows.append(_measure("log-runs", "log a run", name, args))
        logged = total
        out = store / f"compare{total}"
        rows.append(_measure("compare", "retino compare", name,
                             {"store": str(store), "out": str(out), "runs": total}))  # fmt: skip
    return rows


def _measure(stage: str, label: str, dataset: str, args: dict) -> Row:
    """Run one stage in a fresh process (benchmarks/stages.py) and read its figures."""
    _say(f"  {dataset}: {label}")
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("MLFLOW_TRACKING_URI", None)  # the throwaway store, never a server
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.stages", stage, json.dumps(args)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    process_seconds = time.perf_counter() - start
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1].removeprefix("error: ")
        raise RetinoError(f"bench scale: {label} on {dataset} failed: {last}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return Row(
        dataset, label, result["items"], result["seconds"], result["cpu_seconds"],
        process_seconds, result["peak_mb"],
        result["peak_mb"] - result["peak_mb_before"], result["worker_peak_mb"], load,
        result.get("device"),
    )  # fmt: skip


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _report(
    rows: list[Row],
    sizes: list[int],
    px: int,
    frames: int,
    frame: tuple[int, int],
    started: str,
    load: tuple[float, ...],
) -> dict:
    devices = sorted({row.device for row in rows if row.device})
    machine = f"cpu: {cpu_description()}" + (f"; torch on {', '.join(devices)}" if devices else "")
    end_load = os.getloadavg()
    lines = [
        f"retino bench scale: datasets of {', '.join(map(str, sizes))} images of {px} px, "
        f"{frames} frames of {frame[0]}x{frame[1]}",
        f"{machine}; {started}; load average {_loads(load)} at the start, "
        f"{_loads(end_load)} at the end",
        "",
        f"{'dataset':<18}{'stage':<28}{'items':>6}{'s':>8}{'ms/item':>9}{'cpu ms':>8}"
        f"{'process s':>10}{'peak MB':>8}{'+MB':>5}{'worker MB':>10}{'load':>6}",
    ]
    for r in rows:
        worker = f"{r.worker_mb:.0f}" if r.worker_mb else "-"
        lines.append(
            f"{r.dataset:<18}{r.stage:<28}{r.items:>6}{r.seconds:>8.2f}{r.ms_per_item:>9.2f}"
            f"{r.cpu_ms_per_item:>8.2f}{r.process_seconds:>10.1f}{r.peak_mb:>8.0f}"
            f"{r.grown_mb:>5.0f}{worker:>10}{r.load:>6.2f}"
        )
    lines += [
        "- items: images (train: the train split's, evaluate: the test split's), or runs",
        "- s: the work alone, wall time; cpu ms: its CPU time per item, workers included;",
        "  process s: the whole process (start-up, imports, set-up, work)",
        "- peak MB: the process's peak resident memory, +MB: what the work added to it;",
        "  worker MB: the largest worker's peak (forked: pages shared with the parent count);",
        "  the memory-mapped cache pages a stage reads count as resident",
    ]

    growth = _growth(rows, sizes, px)
    result: dict = {"sizes": sizes}
    if growth:
        lines += [
            "",
            f"wall ms per image at each size; ratio: {sizes[-1]} / {sizes[0]} images; "
            "cpu ratio: the same in CPU time",
            f"{'stage':<28}"
            + "".join(f"{n:>9}" for n in sizes)
            + f"{'ratio':>8}{'cpu ratio':>11}   peak MB",
        ]
        for stage, (found, ratios) in growth.items():
            ms = "".join(f"{r.ms_per_item:>9.3f}" for r in found)
            peaks = " ".join(f"{r.peak_mb:.0f}" for r in found)
            lines.append(f"{stage:<28}{ms}{ratios['wall']:>8.2f}{ratios['cpu']:>11.2f}   {peaks}")
    result["ms_per_image"] = {
        stage: [round(r.ms_per_item, 4) for r in found] for stage, (found, _) in growth.items()
    }
    result["growth"] = {stage: ratios["wall"] for stage, (_, ratios) in growth.items()}
    result["cpu_growth"] = {stage: ratios["cpu"] for stage, (_, ratios) in growth.items()}
    result["peak_mb"] = {
        stage: [round(r.peak_mb) for r in found] for stage, (found, _) in growth.items()
    }

    name = f"{frames} x {frame[0]}x{frame[1]}"
    checks = {r.stage: r for r in rows if r.dataset == name and r.stage.startswith("validate")}
    result["validate_old_ms"] = result["validate_ms"] = result["validate_speedup"] = None
    if len(checks) == 2:
        old, new = checks["validate (old)"].ms_per_item, checks["validate"].ms_per_item
        result |= {"validate_old_ms": round(old, 2), "validate_ms": round(new, 2),
                   "validate_speedup": round(old / new, 2)}  # fmt: skip
        lines += [
            "",
            f"retino validate on {name}: {old:.1f} -> {new:.1f} ms per frame, {old / new:.1f}x "
            "the old check (full Pillow decode, one process)",
        ]

    store = [r for r in rows if r.stage == "retino compare"]
    logs = [r for r in rows if r.stage == "log a run"]
    result["runs"] = [r.items for r in store]
    result["compare_s"] = [round(r.seconds, 2) for r in store]
    result["compare_process_s"] = [round(r.process_seconds, 2) for r in store]
    result["log_run_s"] = [round(r.seconds / r.items, 3) for r in logs]
    if store:
        cells = ", ".join(f"{r.items} {_runs(r.items)} {r.process_seconds:.1f} s" for r in store)
        lines += ["", f"retino compare, the whole command: {cells}"]
    result["device"] = machine
    result["load"] = [round(load[0], 2), round(end_load[0], 2)]
    print("\n".join(lines))
    print(json.dumps(result), flush=True)
    return result


def _growth(rows: list[Row], sizes: list[int], px: int) -> dict[str, tuple[list[Row], dict]]:
    """stage -> (its rows at each of `sizes`, the wall and CPU ms-per-image ratios of the largest
    to the smallest), for the stages measured at every size."""
    names = [f"{n} x {px} px" for n in sizes]
    by = {(r.dataset, r.stage): r for r in rows}
    growth = {}
    for stage in dict.fromkeys(r.stage for r in rows if r.dataset in names):
        found = [by.get((name, stage)) for name in names]
        if all(found):
            first, last = found[0], found[-1]
            ratios = {"wall": round(last.ms_per_item / first.ms_per_item, 3),
                      "cpu": round(last.cpu_ms_per_item / first.cpu_ms_per_item, 3)}  # fmt: skip
            growth[stage] = (found, ratios)
    return growth


def _loads(load: tuple[float, ...]) -> str:
    return " ".join(f"{v:.2f}" for v in load[:3])


def _runs(count: int) -> str:
    return "run" if count == 1 else "runs"
