"""A throwaway copy of the project as its own git + DVC repo, shrunk to run in seconds.

retino/ is copied with the stages because dvc.yaml lists its modules as dependencies. The stages
import it from the venv (the editable install of this checkout) unless `project_env(project)`
puts the copy first on the path.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from retino.synth import synthesize
from tests.conftest import ROOT

VENV_BIN = Path(sys.executable).parent
# Tiny: one epoch at 32 px in the main process; no per-epoch test pass.
TINY_PARAMS = {
    "data": {"image_size": 32, "num_workers": 0, "stats_images": 16, "val_fraction": 0.25},
    "train": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0, "track_test": False},
    "eval": {"batch_size": 16},
}


def project_env(project: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment a user's shell would have: venv first on PATH, offline, no stray store.

    With `project`, its copy of retino/ is imported: stages and library stay one snapshot for
    a long run, while this checkout may be edited meanwhile.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1", **extra)
    if project is not None:
        env["PYTHONPATH"] = str(project)
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    out = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout}{out.stderr}")
    return out.stdout


def make_project(dest: Path, data_source: Path | None = None) -> Path:
    """A committed git + DVC repo at `dest`: the pipeline, tiny params, data/ tracked by DVC."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("stages", "retino"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "dvc.yaml", dest / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY_PARAMS.items():
        params[section].update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / ".gitignore").write_text("/mlflow.db\n/mlruns/\n/checkpoints/\n__pycache__/\n")
    if data_source is None:
        synthesize(dest / "data", n_train=48, n_test=16, size=48, seed=3)
    else:
        shutil.copytree(data_source, dest / "data")

    env = project_env()
    run(["git", "init", "-q", "-b", "main"], dest, env)
    # DVC commits each experiment: a CI machine may have no git identity
    run(["git", "config", "user.name", "retino tests"], dest, env)
    run(["git", "config", "user.email", "tests@localhost"], dest, env)
    run(["dvc", "init", "-q"], dest, env)
    run(["dvc", "config", "core.analytics", "false"], dest, env)
    run(["dvc", "config", "cache.type", "hardlink,symlink"], dest, env)
    run(["dvc", "add", "-q", "data"], dest, env)
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-q", "-m", "tiny project"], dest, env)
    return dest
