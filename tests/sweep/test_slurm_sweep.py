"""`retino sweep --slurm` against a real Slurm: a 2x2 grid of tiny CPU experiments as one job
array on a one-node cluster (tests/sweep/cluster.py), logging to a real MLflow server, pushing
to a bare git remote and a DVC remote on disk.

One task is requeued while it trains (as a preemption would) and resumes in its copy, one is
cancelled: its MLflow run ends KILLED and the other cells run on. A second submission then runs
only the cancelled cell, which resumes in the same MLflow run, and skips the three pushed ones.
"""

import json
import re
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from retino.errors import RetinoError
from retino.sweep.slurm import submit, task_states
from tests.dvc_project import make_project, project_env, run
from tests.sweep.cluster import Cluster, slurm_cluster
from tests.tracking.test_server import free_port, server  # noqa: F401 (a fixture)
from tests.training.test_models import random_imagenet_weights

pytestmark = pytest.mark.slow  # a Slurm cluster, an MLflow server, five tiny pipelines

GRID = ["-S", "pretrained=true,false", "-S", "seed=1,2"]
# in the order of `dvc exp run --queue`: the array task ids
CELLS = ["resnet18-pretrained-seed=1", "resnet18-pretrained-seed=2", "resnet18-scratch-seed=1",
         "resnet18-scratch-seed=2"]  # fmt: skip
REQUEUED, CANCELLED = 0, 1  # the first two tasks: they start at once on the 2-CPU node
TIMEOUT_S = 900


@pytest.fixture
def cluster(tmp_path):
    with slurm_cluster(tmp_path / "slurm", cpus=2) as up:
        print(f"Slurm cluster up in {up.started_in_s:.1f} s")
        yield up


def shared_project(tmp_path: Path, source: Path, env: dict[str, str]) -> Path:
    """The tiny project as a lab would set it up for a cluster (README: A shared DVC remote):
    a git remote, a DVC remote outside the repository, every output pushed."""
    project = make_project(tmp_path / "project", source)
    run(["git", "init", "-q", "--bare", str(tmp_path / "remote.git")], tmp_path, env)
    run(["git", "remote", "add", "origin", str(tmp_path / "remote.git")], project, env)
    dvc_yaml = project / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("cache: false  # large", "cache: true"))
    run(["dvc", "remote", "add", "-q", "-d", "storage", str(tmp_path / "dvc-remote")], project,
        env)  # fmt: skip
    run(["git", "commit", "-q", "-am", "shared remotes"], project, env)
    run(["git", "push", "-q", "origin", "main"], project, env)
    run(["dvc", "push", "-q"], project, env)
    return project


def slurm(cmd: list[str], cluster: Cluster) -> str:
    return run(cmd, Path.cwd(), {**project_env(), **cluster.env}, timeout=60)


def wait_for(condition, what: str, timeout: float = TIMEOUT_S, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# a task in any other state may still run: a requeued one passes through REQUEUED and PENDING,
# which plain squeue does not always list
ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE"}  # fmt: skip


def job_done(job: str, cluster: Cluster, tasks: set[int]) -> bool:
    """Every task of the array has ended, as `retino sweep --status` reads Slurm."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
        states = task_states(job)
    return set(states) >= tasks and all(states[t] in ENDED for t in tasks)


def runs_by_cell(url: str, commit: str) -> dict[str, mlflow.entities.Run]:
    client = mlflow.MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("retino")
    found = client.search_runs([experiment.experiment_id], f"tags.git_commit = '{commit}'")
    by_cell = {r.data.tags["dvc_exp_name"]: r for r in found}
    assert len(by_cell) == len(found), "one MLflow run per cell"
    return by_cell


def pushed(project: Path, remote: Path, commit: str, env: dict[str, str]) -> set[str]:
    out = run(["dvc", "exp", "list", str(remote), "--rev", commit, "--name-only"], project, env)
    return set(out.split())


def status(project: Path, job: str, env: dict[str, str]) -> dict[str, list[str]]:
    """`retino sweep --status`: cell -> [slurm, mlflow, run, pushed]."""
    out = run(["retino", "sweep", "--status", job], project, env).splitlines()
    assert out[1].split() == ["cell", "slurm", "mlflow", "run", "pushed"], out
    return {line.split()[0]: line.split()[1:] for line in out[2:]}


def test_a_grid_as_a_job_array(server, cluster, tmp_path, tiny_source):  # noqa: F811
    url, _ = server
    torch_home = tmp_path / "torch"
    random_imagenet_weights(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    env = project_env(TORCH_HOME=str(torch_home), MLFLOW_TRACKING_URI=url, **cluster.env)
    project = shared_project(tmp_path, tiny_source, env)
    remote = tmp_path / "remote.git"
    commit = run(["git", "rev-parse", "HEAD"], project, env).strip()
    sweeps = project / ".dvc" / "tmp" / "sweeps" / commit[:12]
    start = time.monotonic()

    out = run(["retino", "sweep", "--slurm", *GRID], project, env, timeout=120)
    assert "sweep of 4 cells" in out and "4 to run" in out, out
    job = re.search(r"submitted job (\d+)", out)[1]
    assert "#SBATCH --array=0-3" in (sweeps / f"job-{job}.sbatch").read_text()

    # preempt one task and cancel another while they train (their MLflow run is open)
    pending = {REQUEUED: ["scontrol", "requeue"], CANCELLED: ["scancel"]}
    polls = iter(range(10**9))

    def act_on_training() -> bool:
        for index, cmd in list(pending.items()):
            if (sweeps / CELLS[index] / "checkpoints" / "run.json").exists():
                slurm([*cmd, f"{job}_{index}"], cluster)
                del pending[index]
        if pending and next(polls) % 50 == 49 and job_done(job, cluster, set(range(4))):
            logs = "".join(p.read_text()[-3000:] for p in sorted(sweeps.glob("slurm-*.out")))
            raise AssertionError(f"job {job} ended before tasks {sorted(pending)} trained\n{logs}")
        return not pending

    wait_for(act_on_training, "both tasks to train", every=0.1)
    wait_for(lambda: job_done(job, cluster, set(range(4))), f"job {job} to end")
    first = time.monotonic() - start
    logs = {i: (sweeps / f"slurm-{job}_{i}.out").read_text() for i in range(4)}

    runs = runs_by_cell(url, commit)
    assert sorted(runs) == sorted(CELLS)
    states = {cell: r.info.status for cell, r in runs.items()}
    killed = CELLS[CANCELLED]
    expected = {c: "KILLED" if c == killed else "FINISHED" for c in CELLS}
    assert states == expected, "\n".join(
        logs[i] for i, c in enumerate(CELLS) if states[c] != expected[c]
    )
    assert pushed(project, remote, commit, env) == set(CELLS) - {killed}
    # the requeued task ran twice, the second time in its copy, into the same run
    assert logs[REQUEUED].count("a new copy of") == 1, logs[REQUEUED]
    assert f"{CELLS[REQUEUED]}: continuing in" in logs[REQUEUED], logs[REQUEUED]
    shown = status(project, job, env)
    assert shown[killed] == ["CANCELLED", "KILLED", runs[killed].info.run_id, "no"]
    for cell in set(CELLS) - {killed}:
        assert shown[cell] == ["COMPLETED", "FINISHED", runs[cell].info.run_id, "yes"], shown
    # pushed cells leave nothing behind; the cancelled one keeps its copy and checkpoint
    assert sorted(p.name for p in sweeps.iterdir() if p.is_dir()) == [killed]

    # the second submission runs only the cell without an experiment
    start = time.monotonic()
    out = run(["retino", "sweep", "--slurm", *GRID], project, env, timeout=120)
    assert "1 to run, 3 already pushed" in out, out
    again = re.search(r"submitted job (\d+)", out)[1]
    assert f"#SBATCH --array={CANCELLED}\n" in (sweeps / f"job-{again}.sbatch").read_text()
    wait_for(lambda: job_done(again, cluster, {CANCELLED}), f"job {again} to end")
    second = time.monotonic() - start
    log = (sweeps / f"slurm-{again}_{CANCELLED}.out").read_text()
    assert f"{killed}: continuing in" in log, log

    rerun = runs_by_cell(url, commit)
    assert {cell: r.info.status for cell, r in rerun.items()} == dict.fromkeys(CELLS, "FINISHED")
    assert rerun[killed].info.run_id == runs[killed].info.run_id  # resumed, not a new run
    for cell in set(CELLS) - {killed}:  # untouched
        assert rerun[cell].info.end_time == runs[cell].info.end_time
    shown = status(project, again, env)
    assert shown[killed] == ["COMPLETED", "FINISHED", runs[killed].info.run_id, "yes"]
    assert all(shown[c][0] == "skipped" and shown[c][3] == "yes" for c in CELLS if c != killed)

    # four experiments in the git remote, their models in the DVC remote
    assert pushed(project, remote, commit, env) == set(CELLS)
    for cell in CELLS:
        ref = run(["git", "for-each-ref", "--format=%(refname)", f"refs/exps/*/*/{cell}"],
                  remote, env).strip()  # fmt: skip
        lock = yaml.safe_load(run(["git", "show", f"{ref}:dvc.lock"], remote, env))
        (models,) = [o for o in lock["stages"]["train"]["outs"] if o["path"] == "models"]
        manifest = tmp_path / "dvc-remote" / "files" / "md5" / models["md5"][:2] / models["md5"][2:]
        for entry in json.loads(manifest.read_text()):
            md5 = entry["md5"]
            assert (manifest.parents[1] / md5[:2] / md5[2:]).is_file(), (cell, entry["relpath"])
        params = yaml.safe_load(run(["git", "show", f"{ref}:params.yaml"], remote, env))
        assert f"{params['arch']}-{'pretrained' if params['pretrained'] else 'scratch'}-" \
               f"seed={params['seed']}" == cell  # fmt: skip
    print(
        f"2x2 sweep: first job {first:.0f} s (one task requeued, one cancelled), "
        f"second job {second:.0f} s"
    )


def test_a_refused_job_is_one_line(cluster, monkeypatch):
    """sbatch's own reason, here a partition the cluster lacks, as retino's one-line error."""
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    with pytest.raises(RetinoError, match=r"^sbatch refused the sweep: .*[Pp]artition"):
        submit("#!/bin/bash\n#SBATCH --partition=nosuch\ntrue\n")
