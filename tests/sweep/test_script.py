"""The sbatch script: what each task asks Slurm for and what it runs; the checks before a sweep
is submitted. (tests/sweep/test_slurm_sweep.py runs the script on a real cluster.)"""

import os
import re
import subprocess
from pathlib import Path

import pytest

from retino.cli import main
from retino.errors import RetinoError
from retino.sweep import slurm
from retino.sweep.grid import expand
from retino.sweep.repository import Repository
from retino.sweep.script import array_spec, render, resources
from tests.conftest import ROOT
from tests.dvc_project import project_env, run

PARAMS = (ROOT / "params.yaml").read_text()
REPO = Repository(
    root=Path("/home/ana/retino"), commit="4faf86b1c29d" + "0" * 28, branch="main",
    git_url="git@git.lab:dr/retino.git", dvc_remote="storage", dvc_path="/shared/dvc",
    cache=Path("/home/ana/retino/.dvc/cache"), identity=("Ana O'Neil", "ana@lab"),
)  # fmt: skip
URI = "http://mlflow.lab:5000"


def script(args: list[str], todo: list[int] | None = None, **res) -> str:
    cells = expand(args, PARAMS)
    chosen = [c for c in cells if todo is None or c.index in todo]
    text = render(REPO, cells, chosen, resources(cells, **res), Path("/scratch/sweeps/4faf"),
                  URI, Path("/home/ana/retino/.venv/bin"))  # fmt: skip
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)  # valid bash
    return text


def directives(text: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SB")]


def test_one_array_task_per_cell():
    text = script(["arch=resnet18,resnet50", "seed=1,2"], gpus=1, partition="gpu", time="2:00:00")
    assert directives(text) == [
        "--job-name=retino-sweep", "--array=0-3", "--output=/scratch/sweeps/4faf/slurm-%A_%a.out",
        "--open-mode=append", "--requeue", "--nodes=1", "--ntasks=1", "--partition=gpu",
        "--gres=gpu:1", "--time=2:00:00",
    ]  # fmt: skip
    assert "  2) name=resnet50-scratch-seed=1; params=(-S arch=resnet50 -S seed=1) ;;" in text
    assert "export MLFLOW_TRACKING_URI=http://mlflow.lab:5000" in text
    assert 'export PATH=/home/ana/retino/.venv/bin:"$PATH"' in text
    assert "commit=4faf86b1c29d0000" in text and "git_remote=git@git.lab:dr/retino.git" in text
    assert "git -C \"$work.new\" config user.name 'Ana O'\"'\"'Neil'" in text  # quoted
    assert 'dvc remote modify --local "$dvc_remote" url /shared/dvc' in text
    assert 'dvc exp run --pull -n "$name" "${params[@]}"' in text
    assert 'dvc exp push --remote "$dvc_remote" "$git_remote" "$name"' in text
    assert "torchrun" not in text


def test_only_the_cells_to_run_are_in_the_array():
    text = script(["seed=1,2,3,4,5"], todo=[0, 2, 3, 4])
    assert "--array=0,2-4" in directives(text)
    assert "  1) name=resnet18-scratch-seed=2" in text  # every cell, so indices stay stable
    assert not any(d.startswith("--gres") for d in directives(text))


def test_array_spec():
    assert array_spec([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"
    assert array_spec([3]) == "3"


def test_nproc_asks_for_gpus_and_torchrun():
    text = script(["train.nproc=4", "seed=1,2"], gpus=None, cpus=32)
    assert {"--gres=gpu:4", "--cpus-per-task=32"} <= set(directives(text))
    assert "torchrun --standalone --nproc-per-node=4 on this job's 4 GPUs" in text
    text = script(["train.nproc=auto"], gpus=2)  # one process per GPU Slurm gives the job
    assert "--gres=gpu:2" in directives(text) and "--nproc-per-node=2 on this job's 2 GPUs" in text


def test_nproc_on_cpus():
    text = script(["train.nproc=2"], gpus=0)
    assert "--cpus-per-task=2" in directives(text)
    assert not any(d.startswith("--gres") for d in directives(text))
    assert "--nproc-per-node=2 on this job's CPUs (gloo)" in text


@pytest.mark.parametrize(
    ("args", "gpus", "message"),
    [
        (["train.nproc=1,2"], None, r"^train.nproc differs between cells \(1, 2\)"),
        (["train.nproc=4"], 2, r"^train.nproc=4 trains on 4 GPUs per cell, --gpus-per-job says 2"),
        (["train.nnodes=2"], 1, r"^train.nnodes > 1: a sweep runs each cell on one node"),
    ],
)
def test_one_allocation_shape_per_array(args, gpus, message):
    with pytest.raises(RetinoError, match=message):
        resources(expand(args, PARAMS), gpus)


def test_slurm_states_from_sacct_and_squeue():
    sacct = "12_0|COMPLETED\n12_1|CANCELLED by 0\n12_[2-3]|PENDING\n13_0|FAILED\n"
    assert slurm._parse(sacct, "12", "|") == {0: "COMPLETED", 1: "CANCELLED"}
    assert slurm._parse("12_2 RUNNING\n12_3 PENDING\n", "12", " ") == {2: "RUNNING", 3: "PENDING"}


def test_no_slurm_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RetinoError, match=r"^sbatch not found: run this on a Slurm login node"):
        slurm.submit("#!/bin/bash\n")


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A committed git + DVC repository with a bare git remote and a DVC remote beside it."""
    env = project_env()
    root = tmp_path / "repo"
    root.mkdir()
    run(["git", "init", "-q", "-b", "main"], root, env)
    run(["git", "config", "user.name", "t"], root, env)
    run(["git", "config", "user.email", "t@t"], root, env)
    run(["dvc", "init", "-q"], root, env)
    (root / "params.yaml").write_text(PARAMS)
    run(["git", "init", "-q", "--bare", str(tmp_path / "remote.git")], tmp_path, env)
    run(["git", "remote", "add", "origin", "../remote.git"], root, env)  # relative, as typed
    run(["dvc", "remote", "add", "-q", "-d", "storage", "../dvc-remote"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "repo"], root, env)
    for name in [k for k in os.environ if k.startswith(("DVC_", "MLFLOW_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", URI)
    monkeypatch.chdir(root)
    return root


def sweep(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["sweep", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_dry_run_prints_the_script(repo, capsys):
    status, out, err = sweep(capsys, "--slurm", "-S", "seed=1,2", "--dry-run")
    assert status == 0, err
    assert out.startswith("#!/bin/bash\n") and "#SBATCH --array=0-1" in out
    assert f"git_remote={repo.parent / 'remote.git'}" in out  # absolute: tasks run elsewhere
    assert f"url {repo.parent / 'dvc-remote'}" in out
    assert f"dvc cache dir --local {repo / '.dvc' / 'cache'}" in out
    assert err.strip().endswith("2 to run; --dry-run: nothing submitted")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda r, mp: mp.delenv("MLFLOW_TRACKING_URI"), "a sweep logs to a tracking server: "
                                                        "set MLFLOW_TRACKING_URI"),
        (lambda r, mp: mp.setenv("MLFLOW_TRACKING_URI", "sqlite:////shared/mlflow.db"),
         "a sweep logs to a tracking server"),
        (lambda r, mp: (r / "params.yaml").write_text(PARAMS + "\n"),
         r"uncommitted changes \(params.yaml\): a sweep runs the current commit"),
        (lambda r, mp: run(["git", "remote", "remove", "origin"], r, project_env()),
         "no git remote 'origin': the experiments are pushed there"),
        (lambda r, mp: commit(r, ["dvc", "remote", "default", "--unset"]),
         "no default DVC remote"),
        (lambda r, mp: commit(r, ["dvc", "remote", "add", "-f", "-d", "storage", "store"]),
         r"the default DVC remote 'storage' \(.*/repo/store\) is inside the repository"),
    ],
)  # fmt: skip
def test_what_a_task_would_trip_over_is_one_line_at_submission(repo, capsys, monkeypatch, setup,
                                                                message):  # fmt: skip
    setup(repo, monkeypatch)
    status, out, err = sweep(capsys, "--slurm", "-S", "seed=1,2", "--dry-run")
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert re.search(f"^error: {message}", err), err


def commit(root: Path, cmd: list[str]) -> None:
    run(cmd, root, project_env())
    run(["git", "commit", "-qam", "remote"], root, project_env())


def test_status_of_an_unknown_job(repo, capsys):
    status, _, err = sweep(capsys, "--status", "77")
    assert status == 2 and err.startswith("error: no sweep job 77 was submitted from this repo")


def test_a_requeued_task_runs_past_the_lock_table_its_stopped_dvc_left_empty(repo, capsys):
    """Slurm stops a task with signals; one landing while DVC rewrites .dvc/tmp/rwlock leaves
    the file empty, and the task run again must still train its cell and push it."""
    (repo / "dvc.yaml").write_text(
        "stages:\n  cell:\n    cmd: test -f ../go && echo trained > out.txt\n"
        "    params: [seed]\n    outs: [out.txt]\n"
    )  # fails until ../go exists: the first task stops, leaving its copy
    commit(repo, ["git", "add", "dvc.yaml"])
    status, text, err = sweep(capsys, "--slurm", "-S", "seed=3", "--dry-run")
    assert status == 0, err
    env = project_env(SLURM_ARRAY_TASK_ID="0", MLFLOW_TRACKING_URI=URI)

    def task() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", text], cwd=repo, env=env, capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip

    first = task()
    assert first.returncode != 0 and "a new copy of" in first.stdout, first.stdout + first.stderr
    (work,) = (repo / ".dvc" / "tmp" / "sweeps").glob("*/*-seed=3")
    (work / ".dvc" / "tmp" / "rwlock").write_text("")  # as a DVC killed mid-write leaves it
    (work.parent / "go").touch()
    again = task()
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{work.name}: continuing in {work}" in again.stdout
    remote = str(repo.parent / "remote.git")
    pushed = run(["dvc", "exp", "list", remote, "--all-commits", "--name-only"], repo, env)
    assert work.name in pushed.split() and not work.exists()
