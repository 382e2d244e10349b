"""`retino bench pipeline`: a researcher's first `dvc exp run` on a small foreign dataset against
the lab report's own loop on the same photographs, side by side in one run, and where the
pipeline's time goes.

- data: `retino synth` photographs in the lab layout (default 600 train / 200 test camera frames
  of 1440x960, the smallest format of the Messidor cameras), written once into a temporary folder;
- lab report: its loader and loop (benchmarks/baseline.py) in a fresh process, `--epochs` epochs
  of training on every train image, each followed by its look at the test images (the lab report
  kept the epoch that scored best there); timed from the first epoch to the last, so neither its
  imports nor building its model count;
- retino: a fresh copy of the project (stages/, retino/, dvc.yaml, params.yaml) as its own git +
  DVC repository with the data added, then the whole `dvc exp run -S arch=... -S
  data.image_size=... -S train.epochs=...`: prepare, preprocess, train, evaluate, plot, a new
  MLflow store; timed from the command's start to its end.

The stage processes load benchmarks/probe/sitecustomize.py, which splits each one's wall time
into phases (start-up, imports, training loop, MLflow, model export, ...); what lies outside the
stage processes is DVC's own work and the processes' exits. `--source DIR` copies the project
from another tree, e.g. an older commit unpacked by `git archive`, so that a change is measured
by the same benchmark before and after.

stdout: the tables, then one JSON line (always the last). Progress goes to stderr.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import cpu_description
from retino.errors import RetinoError
from retino.synth import synthesize

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("probe")
PROJECT = ("stages", "retino", "dvc.yaml", "params.yaml", ".dvcignore", ".gitignore")
STAGES = ("prepare", "preprocess", "train", "evaluate", "plot")
# the table's rows, in the order a stage meets them; the probe's phase names
PHASES = ("start-up", "imports", "work", "set-up", "MLflow store", "MLflow run start",
          "training loop", "checkpoints", "calibration", "load model", "test predictions",
          "Grad-CAM gallery", "figures", "MLflow logging", "model export", "MLflow run end",
          "other")  # fmt: skip
LOOP = "training loop"
SETUP = (  # the copy becomes a repository of its own, with the data added as a user would
    ["git", "init", "-q", "-b", "main"],
    ["git", "config", "user.name", "bench"],
    ["git", "config", "user.email", "bench@localhost"],
    ["dvc", "init", "-q"],
    ["dvc", "config", "core.analytics", "false"],
    ["dvc", "config", "cache.type", "hardlink,symlink"],
    ["dvc", "add", "-q", "data"],
    ["git", "add", "-A"],
    ["git", "commit", "-q", "-m", "a foreign dataset"],
)


def bench_pipeline(
    n_train: int, n_test: int, frame: tuple[int, int] | None, px: int | None, size: int,
    epochs: int, arch: str, batch_size: int, seed: int, sources: list[Path], repeat: int,
) -> dict:  # fmt: skip
    """`repeat` rounds of the lab report's loop and a `dvc exp run` of each source in turn, each
    one's fastest kept; the report's JSON."""
    for source in sources:
        missing = [name for name in PROJECT[:4] if not (source / name).exists()]
        if missing:
            raise RetinoError(f"--source {source}: no {', '.join(missing)}; give a retino checkout")
    overrides = {"arch": arch, "pretrained": "false", "data.image_size": size,
                 "train.epochs": epochs, "train.batch_size": batch_size}  # fmt: skip
    started, load = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="retino-pipeline-") as tmp:
        tmp = Path(tmp)
        what = f"{frame[0]}x{frame[1]} frames" if frame else f"{px} px images"
        _say(f"writing {n_train} train + {n_test} test {what}")
        synthesize(tmp / "data", n_train, n_test, None if frame else px, seed, frame=frame)
        labs, runs = [], {source: [] for source in sources}
        for round_ in range(repeat):
            _say(f"round {round_ + 1}/{repeat}: the lab report's loop, {epochs} epochs")
            labs.append(_lab(tmp / "data", size, epochs, arch, batch_size))
            for k, source in enumerate(sources):
                _say(f"round {round_ + 1}/{repeat}: dvc exp run in a fresh copy of {source}")
                work = tmp / f"round{round_}-source{k}"
                runs[source].append(_pipeline(source, tmp / "data", work, overrides))
    lab = min(labs, key=lambda r: r["seconds"])
    best = {source: min(found, key=lambda r: r["seconds"]) for source, found in runs.items()}
    title = (f"retino bench pipeline: {n_train} train / {n_test} test {what}; {arch} from "
             f"scratch, {size} px, {epochs} epochs, batch {batch_size}")  # fmt: skip
    return _report(title, lab, best, started, load, repeat, epochs)


def _lab(data: Path, size: int, epochs: int, arch: str, batch_size: int) -> dict:
    """The lab report's loop in a fresh process (this module's `lab_main`)."""
    args = {"data": str(data), "size": size, "epochs": epochs, "arch": arch,
            "batch_size": batch_size}  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.pipeline", json.dumps(args)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RetinoError(f"bench pipeline: the lab report's loop failed: {_last(proc.stderr)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def lab_main(args: dict) -> dict:
    """The child: the lab report's loop, epoch by epoch, timed."""
    import pandas as pd
    import torch
    from PIL import Image

    from benchmarks.baseline import lab_report_loader, lab_report_step, lab_report_test_accuracy
    from retino.data.layouts import read_layout
    from retino.training.models import build_model

    data, size, batch_size = Path(args["data"]), args["size"], args["batch_size"]
    report = read_layout(data)
    report.raise_if_invalid()
    tables = {split: pd.DataFrame({"path": [s.path for s in samples],
                                   "label": [s.label for s in samples]})
              for split, samples in report.samples.items()}  # fmt: skip
    with Image.open(data / tables["train"]["path"][0]) as first:
        stored = first.size
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build_model(args["arch"]).to(device)
    step = lab_report_step(model, device)
    model.train()
    train = lab_report_loader(tables["train"], data, size, batch_size, stored)
    test = lab_report_loader(tables["test"], data, size, batch_size, stored, train=False)
    train_s = test_s = 0.0
    for _ in range(args["epochs"]):
        start = time.perf_counter()
        for x, y in train:
            step(x, y)
        middle = time.perf_counter()
        lab_report_test_accuracy(model, test, device)
        train_s, test_s = train_s + middle - start, test_s + time.perf_counter() - middle
    return {"seconds": train_s + test_s, "train_s": train_s, "test_s": test_s,
            "train_images": len(tables["train"]), "test_images": len(tables["test"])}  # fmt: skip


def _pipeline(source: Path, data: Path, work: Path, overrides: dict) -> dict:
    """A fresh project at `work` with `data`, then the timed `dvc exp run`."""
    project, probe = work / "project", work / "probe"
    probe.mkdir(parents=True)
    project.mkdir()
    for name in PROJECT:
        path = source / name
        if path.is_dir():
            shutil.copytree(path, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif path.is_file():
            shutil.copy2(path, project / name)
    shutil.copytree(data, project / "data")
    # the stages import retino from the copy, never from the checkout this runs in
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env |= {"PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join([str(project), str(PROBE)]),
            "RETINO_BENCH_PROBE": str(probe), "HF_HUB_OFFLINE": "1"}  # fmt: skip
    for cmd in SETUP:
        _check(subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True), cmd)
    cmd = ["dvc", "exp", "run", *(f"-S{k}={v}" for k, v in overrides.items())]
    load = os.getloadavg()[0]
    start = time.time()
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
    end = time.time()
    _check(proc, cmd)
    records = sorted((json.loads(p.read_text()) for p in probe.glob("*.json")),
                     key=lambda r: r["start"])  # fmt: skip
    stages = [r["stage"] for r in records]
    if stages != list(STAGES):
        raise RetinoError(f"bench pipeline: dvc exp run ran {stages}, expected {list(STAGES)}")
    edges = [start] + [t for r in records for t in (r["start"], r["end"])] + [end]
    return {
        "seconds": end - start,
        "stages": {r["stage"]: r["phases"] for r in records},
        "process_s": {r["stage"]: r["end"] - r["start"] for r in records},
        "imports": {r["stage"]: r["imports"] for r in records},
        # DVC's own work and the processes' exits: before, between and after the stages
        "outside_s": sum(b - a for a, b in zip(edges[::2], edges[1::2], strict=True)),
        "metrics": json.loads((project / "reports/eval/metrics.json").read_text()),
        "load": load,
    }


def _report(
    title: str, lab: dict, runs: dict[Path, dict], started: str, load: tuple, repeat: int,
    epochs: int,
) -> dict:  # fmt: skip
    end_load = os.getloadavg()
    lines = [
        title,
        f"cpu: {cpu_description()}; {started}; load average {_loads(load)} at the start, "
        f"{_loads(end_load)} at the end; fastest of {repeat} round(s)",
        "",
        f"lab report's loop  {lab['seconds']:7.1f} s   train {lab['train_s']:.1f} s "
        f"({1000 * lab['train_s'] / lab['train_images'] / epochs:.1f} ms/image), "
        f"test {lab['test_s']:.1f} s",
    ]
    results = []
    for source, run in runs.items():
        loop = run["stages"]["train"].get(LOOP, 0.0)
        ratio, train_ratio = lab["seconds"] / run["seconds"], lab["train_s"] / run["seconds"]
        lines += [
            "",
            f"dvc exp run        {run['seconds']:7.1f} s   {source}",
            f"  training loop {loop:.1f} s, everything else {run['seconds'] - loop:.1f} s; "
            f"ratio {ratio:.2f} (lab report's loop / dvc exp run; its training alone: "
            f"{train_ratio:.2f}); test QWK {run['metrics'].get('qwk', float('nan')):.4f}",
            *_stage_table(run),
        ]
        results.append({
            "source": str(source), "pipeline_s": round(run["seconds"], 2),
            "training_loop_s": round(loop, 2), "fixed_s": round(run["seconds"] - loop, 2),
            "ratio": round(ratio, 3), "train_only_ratio": round(train_ratio, 3),
            "stages": {s: {k: round(v, 3) for k, v in run["stages"][s].items()} for s in STAGES},
            "outside_s": round(run["outside_s"], 2), "test_qwk": run["metrics"].get("qwk"),
            "load": round(run["load"], 2),
        })  # fmt: skip
    lines += [
        "",
        "- lab report's loop: its loader (PIL open, resize, flips, ToTensor) and fp32 SGD step on "
        "every train image, then its test pass, per epoch; its imports and set-up not counted",
        "- phases are exclusive: a phase called inside another counts only in its own row; "
        "imports count wherever they happen; `other`: the stage's remaining code",
        "- DVC, exits: outside the stage processes' Python code: DVC's start-up, its hashing and "
        "lock files between stages, and each process's exit",
    ]
    print("\n".join(lines))
    result = {
        "lab_s": round(lab["seconds"], 2), "lab_train_s": round(lab["train_s"], 2),
        **{k: results[-1][k] for k in ("pipeline_s", "ratio", "train_only_ratio")},
        "runs": results, "device": f"cpu: {cpu_description()}",
        "load": [round(load[0], 2), round(end_load[0], 2)],
    }  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


def _stage_table(run: dict) -> list[str]:
    """Seconds per phase (rows) and stage (columns), then the costliest imports."""
    stages = run["stages"]
    lines = [f"  {'phase':<18}" + "".join(f"{s:>11}" for s in STAGES) + f"{'all':>9}"]
    for phase in PHASES:
        values = [stages[s].get(phase) for s in STAGES]
        if any(values):
            cells = "".join(f"{v:>11.2f}" if v else f"{'':>11}" for v in values)
            lines.append(f"  {phase:<18}{cells}{sum(v or 0 for v in values):>9.2f}")
    process = [run["process_s"][s] for s in STAGES]
    lines.append(f"  {'stage process':<18}" + "".join(f"{v:>11.2f}" for v in process)
                 + f"{sum(process):>9.2f}")  # fmt: skip
    lines.append(f"  {'DVC, exits':<18}{'':>55}{run['outside_s']:>9.2f}")
    lines.append(f"  {'dvc exp run':<18}{'':>55}{run['seconds']:>9.2f}")
    lines.append("  costliest imports (outermost import statements, seconds):")
    for stage in STAGES:
        top = ", ".join(f"{name} {s:.2f}" for name, s in list(run["imports"][stage].items())[:4])
        lines.append(f"    {stage}: {top}")
    return lines


def _check(proc: subprocess.CompletedProcess, cmd: list[str]) -> None:
    if proc.returncode != 0:
        # a stage's own error line (or its exception's) says more than DVC's last line
        lines = [line for line in (proc.stdout + proc.stderr).splitlines()
                 if line.startswith(("error: ", "ERROR: ")) or "Error: " in line]  # fmt: skip
        why = "; ".join(dict.fromkeys(lines)) or _last(proc.stderr)
        raise RetinoError(f"bench pipeline: {' '.join(cmd)} failed: {why}")


def _last(text: str) -> str:
    return (text.strip().splitlines() or ["no output"])[-1].removeprefix("error: ")


def _loads(load: tuple) -> str:
    return " ".join(f"{v:.2f}" for v in load[:3])


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":  # the lab report's loop, in a process of its own
    print(json.dumps(lab_main(json.loads(sys.argv[1]))), flush=True)
