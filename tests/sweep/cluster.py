"""A real one-node Slurm cluster on loopback: munged, slurmctld and slurmd of Debian's slurm-wlm
(22.05) and munge, each started here and stopped by its PID.

Everything lives in one folder: slurm.conf, a fresh munge key, the munge socket (slurm.conf's
AuthInfo points the daemons and the commands at it), state, spool, pid and log files. Nothing
needs root or systemd: the daemons run as the current user (SlurmUser, SlurmdUser), track job
processes by their parent ids (proctrack/linuxproc) and bind no tasks (task/none), so no
cgroups are needed. Clients find the cluster through SLURM_CONF.

The binaries are missing on a developer machine (the tests skip) but not under CI (CI=true:
they fail), where .ci/run installs them.
"""

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from retino.tracking.server import stop

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch")
NODE = "node1"
START_TIMEOUT_S = 60.0
REQUEUE_DELAY_S = 5  # cred_expire: how long a requeued job waits (120 s by default)


@dataclass(frozen=True)
class Cluster:
    conf: Path
    env: dict[str, str]  # SLURM_CONF for the client commands
    started_in_s: float


def require_slurm() -> None:
    missing = [name for name in DAEMONS if shutil.which(name, path=_sbin_path()) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (required when CI=true)")
        pytest.skip(reason)


def _sbin_path() -> str:
    return f"{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin{os.pathsep}/sbin"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config(home: Path, cpus: int) -> str:
    user, host = getpass.getuser(), socket.gethostname().split(".")[0]
    return f"""\
ClusterName=retino-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={home}/munge/munge.socket,cred_expire={REQUEUE_DELAY_S}
StateSaveLocation={home}/state
SlurmdSpoolDir={home}/spool
SlurmctldPidFile={home}/slurmctld.pid
SlurmdPidFile={home}/slurmd.pid
SlurmctldLogFile={home}/log/slurmctld.log
SlurmdLogFile={home}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=2
KillWait=30
NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def slurm_cluster(home: Path, cpus: int = 2) -> Iterator[Cluster]:
    """The cluster, up (its node idle) for the duration of the block."""
    require_slurm()
    start = time.monotonic()
    for sub in ("munge", "state", "spool", "log"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    key = home / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = home / "slurm.conf"
    conf.write_text(_config(home, cpus))
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": _sbin_path()}
    processes: list[subprocess.Popen] = []

    def daemon(*cmd: str) -> None:
        with open(home / "log" / f"{Path(cmd[0]).name}.out", "w") as log:  # the child's copy
            process = subprocess.Popen(
                cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        processes.append(process)

    try:
        socket_path = home / "munge" / "munge.socket"
        # --force: munged refuses a socket that other users cannot reach (pytest's folders
        # are private), which matters nothing when every client is this user
        daemon("munged", "--foreground", "--force", f"--socket={socket_path}", f"--key-file={key}",
               f"--pid-file={home}/munge/munged.pid", f"--seed-file={home}/munge/seed",
               f"--log-file={home}/log/munged.log")  # fmt: skip
        _wait(lambda: socket_path.is_socket(), "munged's socket", home, processes)
        daemon("slurmctld", "-D", "-f", str(conf))
        daemon("slurmd", "-D", "-N", NODE, "-f", str(conf))
        _wait(lambda: _node_state(env) == "idle", "the node to be idle", home, processes)
        yield Cluster(conf, {"SLURM_CONF": str(conf)}, time.monotonic() - start)
    finally:
        _cancel_all(env)
        for process in reversed(processes):  # slurmd, slurmctld, then munged
            stop(process)


def _node_state(env: dict[str, str]) -> str:
    out = subprocess.run(["sinfo", "--noheader", "--format=%t"], env=env, capture_output=True,
                         text=True, timeout=30, check=False)  # fmt: skip
    return out.stdout.strip()


def _wait(ready, what: str, home: Path, processes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        dead = [p for p in processes if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}"
                             for p in sorted((home / "log").iterdir()))  # fmt: skip
            why = f"{dead[0].args[0]} exited {dead[0].returncode}" if dead else "timed out"
            raise AssertionError(f"Slurm cluster: waiting for {what}: {why}\n{logs}")
        time.sleep(0.2)


def _cancel_all(env: dict[str, str]) -> None:
    """No job outlives the cluster: its tasks' processes are not the daemons' children."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(["scancel", "--full", f"--user={getpass.getuser()}"], env=env,
                       capture_output=True, timeout=30, check=False)  # fmt: skip
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            queue = ["squeue", "--noheader", "--format=%i"]
            out = subprocess.run(queue, env=env, capture_output=True, text=True, timeout=30,
                                 check=False)  # fmt: skip
            if out.returncode != 0 or not out.stdout.strip():
                return
            time.sleep(0.5)
