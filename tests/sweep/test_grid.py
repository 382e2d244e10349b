"""A sweep's grid is `dvc exp run --queue -S`'s: the same cells in the same order, each checked
and named after its variant."""

import ast
import re
import subprocess
from pathlib import Path

import pytest

from retino.errors import RetinoError
from retino.sweep.grid import expand
from retino.tracking.runs import run_name
from tests.conftest import ROOT
from tests.dvc_project import project_env, run

PARAMS = (ROOT / "params.yaml").read_text()


def queued_overrides(tmp_path: Path, args: list[str]) -> list[tuple[str, ...]]:
    """What `dvc exp run --queue` queues for `-S args`, in order, as `-S` values."""
    env = project_env()
    run(["git", "init", "-q"], tmp_path, env)
    run(["dvc", "init", "-q"], tmp_path, env)
    (tmp_path / "params.yaml").write_text(PARAMS)
    (tmp_path / "other.yaml").write_text("x: 0\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: 'true'\n    params: [seed, train.lr, other.yaml: [x]]\n"
    )
    run(["git", "add", "-A"], tmp_path, env)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "p"], tmp_path, env)
    out = run(["dvc", "exp", "run", "--queue", *(f"-S{a}" for a in args)], tmp_path, env)
    queued = []
    for line in re.findall(r"Queueing with overrides '(.*)'\.", out):
        by_file = ast.literal_eval(line)
        queued.append(tuple(o if f == "params.yaml" else f"{f}:{o}"
                            for f, over in by_file.items() for o in over))  # fmt: skip
    return queued


def test_cells_are_dvc_queue_experiments(tmp_path):
    args = ["arch=resnet18,resnet50", "pretrained=true,false", "seed=1,2,3", "train.lr=0.01",
            "other.yaml:x=1,2"]  # fmt: skip
    cells = expand(args, PARAMS)
    assert [c.params for c in cells] == queued_overrides(tmp_path, args)
    assert [c.index for c in cells] == list(range(24))
    assert cells[0].name == "resnet18-pretrained-seed=1-lr=0.01-x=1"
    assert cells[-1].name == "resnet50-scratch-seed=3-lr=0.01-x=2"
    assert (cells[-1].config.arch, cells[-1].config.pretrained) == ("resnet50", False)
    assert cells[-1].config.seed == 3 and cells[-1].config.train.lr == 0.01


def test_no_list_is_one_cell():
    (cell,) = expand(["train.epochs=3"], PARAMS)
    assert cell.params == ("train.epochs=3",) and cell.name == "resnet18-scratch-epochs=3"
    (cell,) = expand([], PARAMS)
    assert cell.params == () and cell.name == "resnet18-scratch"


def test_names_tell_keys_apart():
    cells = expand(["train.batch_size=8", "eval.batch_size=16,32", "pretrained=x/a.pth"], PARAMS)
    assert [c.name for c in cells] == [
        "resnet18-pretrained-train.batch_size=8-eval.batch_size=16-pretrained=a.pth",
        "resnet18-pretrained-train.batch_size=8-eval.batch_size=32-pretrained=a.pth",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["arch=resnet18,resnet51"], r"^-S arch=resnet51: arch: must be one of resnet18, .*got "
                                     r"'resnet51'$"),
        (["train.lrr=1,2"], r"^-S train.lrr=1: params.yaml has no such key$"),
        (["train.lr=0.1", "seed=-1"], r"^-S train.lr=0.1 -S seed=-1: seed: must be an integer"),
        (["arch=[resnet18"], r"^-S: .*'\[resnet18'"),
        (["pretrained=a/x.pth,b/x.pth"], r"^cells pretrained=a/x.pth and pretrained=b/x.pth "
                                         r"would both be named resnet18-pretrained-pretrained=x"),
    ],
)  # fmt: skip
def test_a_bad_cell_is_one_line_before_anything_runs(args, message):
    with pytest.raises(RetinoError, match=message):
        expand(args, PARAMS)


def test_a_name_is_a_valid_experiment_name():
    (cell,) = expand(["train.device=cuda:0", "data.image_size=64"], PARAMS)
    assert cell.name == "resnet18-scratch-device=cuda_0-image_size=64"
    ref = f"refs/exps/ab/cdef/{cell.name}"
    assert subprocess.run(["git", "check-ref-format", ref], check=False).returncode == 0


def test_a_sweep_run_is_named_after_its_experiment(monkeypatch):
    flat = {"arch": "resnet18", "pretrained": True}
    monkeypatch.setenv("DVC_EXP_NAME", "resnet18-pretrained-seed=1")
    assert run_name(flat) == "resnet18-pretrained-seed=1"
    monkeypatch.setenv("DVC_EXP_NAME", "bluff-quiz")  # a name DVC made up
    assert run_name(flat) == "resnet18-pretrained-bluff-quiz"
