"""`retino sweep`: a grid of experiments as one Slurm job array, and its status.

Submitting checks everything a task would trip over hours later (the tracking server, the
remotes, the params of every cell), leaves out the cells whose experiment the git remote
already holds, and records the job (`<root>/.dvc/tmp/sweeps/jobs/<job>.json`) for `--status`.
"""

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from retino.errors import RetinoError
from retino.sweep import slurm
from retino.sweep.grid import Cell, expand
from retino.sweep.repository import Repository, inspect, pushed
from retino.sweep.script import Resources, render, resources
from retino.tracking.store import Store, check_server, git, is_server_uri, tracking_uri

SWEEPS = Path(".dvc", "tmp", "sweeps")  # under the root; git and DVC ignore .dvc/tmp


@dataclass(frozen=True)
class Plan:
    repo: Repository
    cells: list[Cell]  # the whole grid
    todo: list[Cell]  # the cells without a pushed experiment
    sweep_dir: Path  # the cells' copies and the tasks' logs
    tracking_uri: str
    script: str


@dataclass(frozen=True)
class CellStatus:
    cell: str
    slurm: str  # the task's state; "-": Slurm no longer knows it; "skipped": pushed before
    mlflow: str  # the MLflow run's status, "-" without one
    run_id: str
    pushed: bool


def plan(
    root: Path,
    set_params: list[str],
    gpus: int | None,
    partition: str | None = None,
    cpus: int | None = None,
    time: str | None = None,
    git_remote: str = "origin",
    workdir: Path | None = None,
) -> Plan:
    """The sweep as it would be submitted now."""
    uri = tracking_uri(root)
    if not is_server_uri(uri):
        raise RetinoError("a sweep logs to a tracking server: set MLFLOW_TRACKING_URI=http://"
                          "HOST:PORT (a local store on a compute node is nobody's; README: A "
                          "shared MLflow tracking server)")  # fmt: skip
    repo = inspect(root, git_remote)
    params_yaml = git(repo.root, "show", f"{repo.commit}:params.yaml")
    if not params_yaml:
        raise RetinoError(f"no params.yaml in commit {repo.short}")
    cells = expand(set_params, params_yaml)
    res: Resources = resources(cells, gpus, partition, cpus, time)
    done = pushed(repo.git_url, repo.commit)
    todo = [c for c in cells if c.name not in done]
    sweep_dir = Path(workdir or repo.root / SWEEPS).resolve() / repo.short
    script = render(repo, cells, todo, res, sweep_dir, uri, Path(sys.executable).parent)
    return Plan(repo, cells, todo, sweep_dir, uri, script)


def submit(plan: Plan) -> str:
    """Submit the plan's job array; its job id. The script is kept beside the logs."""
    check_server(plan.repo.root)  # a dead server would fail every task
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    job = slurm.submit(plan.script)
    (plan.sweep_dir / f"job-{job}.sbatch").write_text(plan.script)
    record = {
        "job": job, "commit": plan.repo.commit, "git_url": plan.repo.git_url,
        "tracking_uri": plan.tracking_uri, "sweep_dir": str(plan.sweep_dir),
        "cells": [{"index": c.index, "name": c.name, "params": list(c.params),
                   "submitted": c in plan.todo} for c in plan.cells],
    }  # fmt: skip
    jobs = plan.repo.root / SWEEPS / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    (jobs / f"{job}.json").write_text(json.dumps(record, indent=1) + "\n")
    return job


def status(root: Path, job: str) -> tuple[dict, list[CellStatus]]:
    """The recorded sweep of `job` and, per cell, its task's state, MLflow run and whether its
    experiment has been pushed."""
    from retino.tracking.queries import runs_of_commit  # imports mlflow: seconds

    path = Path(root, SWEEPS, "jobs", f"{job}.json")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        raise RetinoError(f"no sweep job {job} was submitted from this repository "
                          f"({path.parent})") from None  # fmt: skip
    states = slurm.task_states(job)
    check_server(root, uri=record["tracking_uri"])  # not MLflow's minutes of retries
    runs = {}  # the newest run of each cell wins
    for run in runs_of_commit(Store(Path(root), record["tracking_uri"]), record["commit"]):
        runs[run.dvc_exp_name] = run
    done = pushed(record["git_url"], record["commit"])
    rows = []
    for cell in record["cells"]:
        run = runs.get(cell["name"])
        slurm_state = states.get(cell["index"], "-") if cell["submitted"] else "skipped"
        rows.append(CellStatus(cell["name"], slurm_state, run.status if run else "-",
                               run.run_id if run else "-", cell["name"] in done))  # fmt: skip
    return record, rows
