"""A params.yaml error must not cost the last run's results: a real `dvc repro` after a typo.

DVC deletes a stage's outputs before running it, and the uncached ones (metrics, history,
predictions) cannot be checked out again. dvc.yaml marks them `persist: true`; the stages replace
them only once they have succeeded.
"""

import subprocess

import pytest

from tests.dvc_project import make_project, project_env, run

pytestmark = pytest.mark.slow  # whole dvc repro runs

KEPT = [
    "reports/train/metrics.json", "reports/train/history.csv",
    "reports/eval/metrics.json", "reports/eval/predictions.csv", "reports/eval/confusion.json",
]  # fmt: skip


def test_a_params_error_keeps_the_last_results(tmp_path, tiny_source):
    project = make_project(tmp_path / "project", tiny_source)
    env = project_env(project)
    run(["dvc", "repro"], project, env, timeout=900)
    before = {name: (project / name).read_bytes() for name in KEPT}
    params = project / "params.yaml"
    good = params.read_text()
    assert "\n  lr: 0.002\n" in good

    params.write_text(good.replace("\n  lr: 0.002\n", "\n  lr: fast\n"))
    failed = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True,
                            text=True, timeout=600, check=False)  # fmt: skip
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert errors == ["error: params.yaml: train.lr: must be a finite number > 0, got 'fast'"]
    assert {name: (project / name).read_bytes() for name in KEPT} == before
    assert "train" in run(["dvc", "status"], project, env)  # and DVC says they are out of date

    params.write_text(good.replace("\n  lr: 0.002\n", "\n  lr: 0.004\n"))
    run(["dvc", "repro"], project, env, timeout=900)
    history = (project / "reports/train/history.csv").read_text()
    assert history != before["reports/train/history.csv"].decode()  # the new run's, complete
    assert len(history.splitlines()) == 2  # header + the one tiny epoch
    assert "Data and pipelines are up to date" in run(["dvc", "status"], project, env)
