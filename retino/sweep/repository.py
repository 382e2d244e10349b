"""What a sweep runs and where its experiments go: this repository's commit and remotes.

A sweep runs the current commit, never uncommitted edits: every array task clones it. Its
experiments are pushed to the git remote (the refs) and the default DVC remote (the outputs),
which must both be reachable from the compute nodes. A DVC remote inside the repository (the
bundled sample store) would receive them in a task's throwaway copy: refused.
"""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from retino.errors import RetinoError
from retino.tracking.store import git

LIST_TIMEOUT_S = 120


@dataclass(frozen=True)
class Repository:
    root: Path
    commit: str
    branch: str  # or "" on a detached HEAD
    git_url: str  # where the experiments' refs are pushed
    dvc_remote: str  # the default DVC remote's name: where their outputs go
    dvc_path: str | None  # a local DVC remote's absolute path (set in every copy), else None
    cache: Path  # this repository's DVC cache, shared by the copies
    identity: tuple[str, str]  # git user.name, user.email: DVC commits every experiment

    @property
    def short(self) -> str:
        return self.commit[:12]


def inspect(root: Path, git_remote: str) -> Repository:
    """The facts a sweep needs, each missing one a one-line error saying what to set up."""
    root = Path(root).resolve()
    commit = git(root, "rev-parse", "HEAD")
    if not commit:
        raise RetinoError(f"{root}: not a git repository with a commit; a sweep runs a commit")
    changed = git(root, "diff", "--name-only", "HEAD").splitlines()  # staged or not
    if changed:
        files = ", ".join(changed[:3]) + (", ..." if len(changed) > 3 else "")
        raise RetinoError(f"uncommitted changes ({files}): a sweep runs the current commit in "
                          "fresh copies; commit them first")  # fmt: skip
    url = git(root, "remote", "get-url", git_remote)
    if not url:
        raise RetinoError(
            f"no git remote {git_remote!r}: the experiments are pushed there; "
            f"git remote add {git_remote} URL, or pick one with --git-remote"
        )
    if Path(root, url).is_dir():  # a local path, maybe relative to the repository
        url = str(Path(root, url).resolve())
    name, email = git(root, "config", "user.name"), git(root, "config", "user.email")
    if not (name and email):
        raise RetinoError("git has no user.name / user.email: DVC commits every experiment; "
                          "git config --global user.name ... and user.email ...")  # fmt: skip
    dvc_remote, dvc_path, cache = _dvc_setup(root)
    return Repository(root, commit, git(root, "branch", "--show-current"), url, dvc_remote,
                      dvc_path, cache, (name, email))  # fmt: skip


def _dvc_setup(root: Path) -> tuple[str, str | None, Path]:
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            config, cache = repo.config, Path(repo.cache.local_cache_dir)
    except DvcException as err:
        raise RetinoError(f"{root}: {err}") from None
    name = config["core"].get("remote")
    if not name:
        raise RetinoError("no default DVC remote: the experiments' outputs are pushed there; "
                          "dvc remote add -d NAME URL (README: A shared DVC remote)")  # fmt: skip
    url = str(config["remote"][name]["url"])
    if "://" in url:
        return name, None, cache
    path = Path(url).resolve()  # DVC has made a local remote's path absolute
    if path.is_relative_to(root):
        raise RetinoError(f"the default DVC remote {name!r} ({path}) is inside the repository: "
                          "each task would push into its own copy of it; add a remote outside "
                          "(README: A shared DVC remote)")  # fmt: skip
    return name, str(path), cache


def pushed(git_url: str, commit: str) -> set[str]:
    """Names of the experiments of `commit` that the git remote holds."""
    cmd = [sys.executable, "-m", "dvc", "exp", "list", git_url, "--rev", commit, "--name-only"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=LIST_TIMEOUT_S,
                             check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise RetinoError(f"git remote {git_url}: no answer within {LIST_TIMEOUT_S} s") from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no message"])[-1]
        raise RetinoError(f"git remote {git_url}: cannot list its experiments ({last})")
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}
