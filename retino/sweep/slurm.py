"""Talking to Slurm: submit a script, read the states of a job array's tasks.

`sacct` knows every task a cluster with accounting (slurmdbd) has run; `squeue --states=all`
knows the pending and running ones and, for MinJobAge (300 s by default), the finished ones.
Both are asked, squeue's answer winning for the tasks it still holds.
"""

import shutil
import subprocess

from retino.errors import RetinoError

TIMEOUT_S = 60


def submit(script: str) -> str:
    """sbatch the script (given on standard input); the job id."""
    out = _slurm(["sbatch", "--parsable"], script)
    if out.returncode != 0:
        raise RetinoError(f"sbatch refused the sweep: {_last_line(out.stderr)}")
    return out.stdout.strip().split(";")[0]  # "<id>" or "<id>;<cluster>"


def task_states(job: str) -> dict[int, str]:
    """Array index -> Slurm state (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ...) of the
    tasks Slurm still knows."""
    states: dict[int, str] = {}
    accounting = _slurm(["sacct", "--jobs", job, "--allocations", "--noheader", "--parsable2",
                         "--format=JobID,State"])  # fmt: skip
    if accounting.returncode == 0:  # "Slurm accounting storage is disabled" otherwise
        states |= _parse(accounting.stdout, job, "|")
    queue = _slurm(["squeue", "--jobs", job, "--array", "--noheader", "--states=all",
                    "--format=%i %T"])  # fmt: skip
    if queue.returncode == 0:  # "Invalid job id specified" once the job has left memory
        states |= _parse(queue.stdout, job, " ")
    return states


def _parse(text: str, job: str, sep: str) -> dict[int, str]:
    states = {}
    for line in text.splitlines():
        task, _, state = line.strip().partition(sep)
        prefix, _, index = task.partition("_")
        if prefix == job and index.isdigit():  # not a pending range such as 12_[3-5]
            states[int(index)] = state.split()[0] if state.split() else "UNKNOWN"  # CANCELLED by 0
    return states


def _slurm(cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    if shutil.which(cmd[0]) is None:
        raise RetinoError(f"{cmd[0]} not found: run this on a Slurm login node "
                          "(or put Slurm's commands on PATH)")  # fmt: skip
    try:
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True,
                              timeout=TIMEOUT_S, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise RetinoError(f"{cmd[0]}: no answer from Slurm within {TIMEOUT_S} s") from None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("sbatch: error: ") if lines else "no message"
