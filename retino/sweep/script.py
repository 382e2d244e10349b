"""The sbatch script of a sweep: one job array, a task per cell, readable and self-contained.

Each task clones the sweep's commit into a folder named after its cell, sharing this
repository's DVC cache, runs `dvc exp run -n <cell> -S ...` there and pushes the experiment
(`dvc exp push`) to the git remote and the DVC remote; once pushed the copy is deleted. A task
that fails or is cancelled keeps its copy: the train stage's checkpoints/ (which DVC does not
wipe) and its MLflow run id are there, so a requeued task (`--requeue`: preemption, a lost
node) or the next submission resumes that training, in the same MLflow run.

Slurm signals every process of a cancelled or preempted task: the train, evaluate and plot
stages end their MLflow run KILLED (retino.tracking.runs), within KillWait (30 s by default).
"""

import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from retino.errors import RetinoError
from retino.sweep.grid import Cell
from retino.sweep.repository import Repository


@dataclass(frozen=True)
class Resources:
    """What each array task asks Slurm for (None: the cluster's default)."""

    gpus: int
    nproc: int | str  # train.nproc of every cell: processes per training, "auto" = one per GPU
    partition: str | None = None
    cpus: int | None = None
    time: str | None = None


def resources(
    cells: list[Cell],
    gpus: int | None = None,
    partition: str | None = None,
    cpus: int | None = None,
    time: str | None = None,
) -> Resources:
    """One array asks for one shape of allocation: every cell must train with the same number
    of processes. `train.nproc: N` > 1 asks for N GPUs (`gpus` 0: N processes on CPUs)."""
    nprocs = {cell.config.train.nproc for cell in cells}
    if len(nprocs) > 1:
        raise RetinoError(f"train.nproc differs between cells ({', '.join(map(str, nprocs))}): "
                          "a job array asks for one allocation size; sweep each value on its "
                          "own")  # fmt: skip
    if any(cell.config.train.nnodes > 1 for cell in cells):
        raise RetinoError(
            "train.nnodes > 1: a sweep runs each cell on one node; train across nodes with "
            "torchrun by hand (README: Multi-GPU / multi-node)"
        )
    (nproc,) = nprocs
    if isinstance(nproc, int) and nproc > 1:
        if gpus not in (None, 0, nproc):
            raise RetinoError(
                f"train.nproc={nproc} trains on {nproc} GPUs per cell, --gpus-per-job says "
                f"{gpus}; drop it or make them agree"
            )
        if gpus == 0 and cpus is None:
            cpus = nproc  # DDP on CPUs (gloo): a core per process at least
        gpus = nproc if gpus is None else gpus
    return Resources(gpus or 0, nproc, partition, cpus, time)


def array_spec(indices: Iterable[int]) -> str:
    """0,1,2,5 -> '0-2,5': Slurm's --array syntax."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def render(
    repo: Repository,
    cells: list[Cell],
    todo: list[Cell],
    res: Resources,
    sweep_dir: Path,
    tracking_uri: str,
    bin_dir: Path,
) -> str:
    """The script: sbatch directives, then what every task does with its cell."""
    q = shlex.quote
    where = f"{repo.root} at {repo.short}" + (f" ({repo.branch})" if repo.branch else "")
    directives = [
        "--job-name=retino-sweep",
        f"--array={array_spec(c.index for c in todo)}",
        f"--output={sweep_dir}/slurm-%A_%a.out",
        "--open-mode=append",  # a requeued task writes on in its log
        "--requeue",  # preempted, or its node lost: run again, resuming
        "--nodes=1",
        "--ntasks=1",
    ]
    if res.partition:
        directives.append(f"--partition={res.partition}")
    if res.gpus:
        directives.append(f"--gres=gpu:{res.gpus}")
    if res.cpus:
        directives.append(f"--cpus-per-task={res.cpus}")
    if res.time:
        directives.append(f"--time={res.time}")
    part = f", {len(todo)} of them in this job" if len(todo) < len(cells) else ""
    lines = [
        "#!/bin/bash",
        f"# retino sweep of {where}: {len(cells)} cells{part}, an array task per cell.",
        "# `retino sweep --status <job id>` lists them: cell, Slurm state, MLflow run.",
        *(f"#SBATCH {d}" for d in directives),
        "set -euo pipefail",
        "",
        f"repo={q(str(repo.root))}",
        f"commit={repo.commit}",
        f"sweep={q(str(sweep_dir))}  # a copy per cell, until pushed",
        f"git_remote={q(repo.git_url)}  # the experiments go here (dvc exp push) ...",
        f"dvc_remote={q(repo.dvc_remote)}  # ... and their outputs to this DVC remote",
        f"export MLFLOW_TRACKING_URI={q(tracking_uri)}",
        f'export PATH={q(str(bin_dir))}:"$PATH"',
        "",
        "case $SLURM_ARRAY_TASK_ID in",
        *(f"  {c.index}) name={q(c.name)}; params=({_params(c)}) ;;" for c in cells),
        "esac",
        'work="$sweep/$name"',
        "",
        "# an experiment already pushed (a finished task, requeued) is not run again",
        'if dvc exp list "$git_remote" --rev "$commit" --name-only | grep -xF "$name" >/dev/null'
        "; then",
        '  echo "$name: already pushed to $git_remote"',
        "  exit 0",
        "fi",
        "# a requeued task finds its copy: the training resumes from its checkpoint",
        'if [ -d "$work" ]; then',
        '  echo "$name: continuing in $work"',
        "  # the task before may have been stopped while DVC rewrote its lock table, which leaves",
        "  # it empty and every dvc command refusing; no other task works in this copy",
        '  rm -f "$work/.dvc/tmp/rwlock"',
        "else",
        '  echo "$name: a new copy of $commit in $work"',
        '  rm -rf "$work.new"',
        '  git clone --quiet --no-checkout "$repo" "$work.new"',
        '  git -C "$work.new" checkout --quiet --detach "$commit"',
        f'  git -C "$work.new" config user.name {q(repo.identity[0])}',
        f'  git -C "$work.new" config user.email {q(repo.identity[1])}',
        '  if [ -f "$repo/.dvc/config.local" ]; then cp "$repo/.dvc/config.local" '
        '"$work.new/.dvc/"; fi',
        f'  (cd "$work.new" && dvc cache dir --local {q(str(repo.cache))})  # shared',
    ]
    if repo.dvc_path:  # a relative path in .dvc/config would point into the copy
        lines.append(f'  (cd "$work.new" && dvc remote modify --local "$dvc_remote" url '
                     f"{q(repo.dvc_path)})")  # fmt: skip
    lines += [
        '  mv "$work.new" "$work"',
        "fi",
        'cd "$work"',
        'export PYTHONPATH="$work${PYTHONPATH:+:$PYTHONPATH}"  # the stages import its retino',
    ]
    processes = res.gpus if res.nproc == "auto" else res.nproc
    if isinstance(processes, int) and processes > 1:
        lines.append(f"# train.nproc={res.nproc}: the train stage runs torchrun --standalone "
                     f"--nproc-per-node={processes} on this job's {_devices(res)}")  # fmt: skip
    lines += [
        'if ! dvc exp list --name-only | grep -xF "$name" >/dev/null; then  # not run to the end',
        '  dvc exp run --pull -n "$name" "${params[@]}"',
        "fi",
        'dvc exp push --remote "$dvc_remote" "$git_remote" "$name"',
        'cd "$sweep" && rm -rf "$work"',
        "",
    ]
    return "\n".join(lines)


def _params(cell: Cell) -> str:
    return " ".join(f"-S {shlex.quote(p)}" for p in cell.params)


def _devices(res: Resources) -> str:
    return f"{res.gpus} GPUs" if res.gpus else "CPUs (gloo)"
