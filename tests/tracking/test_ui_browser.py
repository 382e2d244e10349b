"""`retino ui` serves the project's runs; a real browser shows their names and metrics.

The runs are logged straight through retino.tracking.runs: no training. The browser is Debian's
`chromium` + `chromium-driver`, driven by Selenium. Without them the browser test skips on a
developer machine, but fails under CI (CI=true), where .ci/run installs them.
The UI is started once for the module; the Ctrl-C test stops it, so it comes last.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from retino.tracking.runs import open_run
from tests.dvc_project import project_env

RUNS = {"resnet18-pretrained-ui": 0.8125, "resnet50-scratch-ui": 0.6875}  # name: test accuracy
RETINO = str(Path(sys.executable).with_name("retino"))
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--window-size=1600,1000",
)  # fmt: skip


@dataclass
class Ui:
    root: Path
    port: int
    url: str
    process: subprocess.Popen
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float, what: str, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def log_runs(root: Path) -> None:
    for name, accuracy in RUNS.items():
        with open_run(root, name=name) as run:
            run.log_params({"arch": name.split("-")[0]})
            for epoch in (1, 2, 3):
                run.log_metrics({"val_qwk": 0.1 * epoch}, step=epoch)
            run.log_metrics({"test_accuracy": accuracy})


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """`retino ui` in a git workspace with two runs in its store (root = the git top level)."""
    root = tmp_path_factory.mktemp("ui")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True, timeout=30)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("DVC_ROOT", raising=False)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        log_runs(root)
    port = free_port()
    log = root / "ui.log"
    with open(log, "w") as out:
        process = subprocess.Popen([RETINO, "ui", "--port", str(port)], cwd=root,
                                   env=project_env(), stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        start = time.monotonic()
        url = f"http://127.0.0.1:{port}"
        up = lambda: process.poll() is not None or f"MLflow UI: {url}" in log.read_text()  # noqa: E731
        wait_for(up, 240, "retino ui to print its URL")
        assert process.poll() is None, log.read_text()
        print(f"retino ui: URL printed after {time.monotonic() - start:.1f} s")
        yield Ui(root, port, url, process, log)
    finally:
        if process.poll() is None:  # the Ctrl-C test did not run or failed: stop it all
            for pid in children(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            process.kill()
        process.wait(30)


def test_ui_serves_the_project_store(ui):
    client = mlflow.MlflowClient(tracking_uri=ui.url)
    experiment = client.get_experiment_by_name("retino")
    assert experiment.artifact_location == (ui.root / "mlruns").as_uri()
    runs = client.search_runs([experiment.experiment_id])
    assert {r.info.run_name: r.data.metrics["test_accuracy"] for r in runs} == RUNS


def test_busy_port_is_a_one_line_error(ui):
    start = time.monotonic()
    out = subprocess.run([RETINO, "ui", "--port", str(ui.port)], cwd=ui.root, env=project_env(),
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2
    assert out.stderr == f"error: port {ui.port} on 127.0.0.1 is in use (another MLflow UI?); " \
        f"pick another with --port {ui.port + 1}\n"  # fmt: skip
    assert time.monotonic() - start < 20  # answered before importing mlflow


def browser():
    """Selenium on Debian's Chromium; skip (fail under CI) when either is missing."""
    missing = [tool for tool in ("chromium", "chromedriver") if shutil.which(tool) is None]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        reason = f"no {', '.join(missing)}: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (required when CI=true)")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(60)
    return driver


def show(driver, url: str, *texts: str) -> str:
    """Open `url` and wait until the page shows every text: a single-page app, so poll."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    def shown() -> str:
        try:
            text = driver.find_element(By.TAG_NAME, "body").text
        except WebDriverException:  # the page is being re-rendered
            return ""
        return text if all(t in text for t in texts) else ""

    driver.get(url)
    text = wait_for(shown, 90, f"{texts} on {url}")
    # the Assistant side panel opens by default and covers a third of the page
    for button in driver.find_elements(
        By.CSS_SELECTOR, '[data-component-id="mlflow.assistant.chat_panel.close"]'
    ):
        button.click()
    return text


def test_browser_shows_runs_and_metrics(ui, tmp_path):
    driver = browser()
    experiment = mlflow.MlflowClient(tracking_uri=ui.url).get_experiment_by_name("retino")
    run = mlflow.MlflowClient(tracking_uri=ui.url).search_runs(
        [experiment.experiment_id], "attributes.run_name = 'resnet18-pretrained-ui'"
    )[0]
    runs_page = f"{ui.url}/#/experiments/{experiment.experiment_id}/runs"
    try:
        # the runs list as charts: a chart per metric, titled by its name, a bar per run
        show(driver, f"{runs_page}?workflowType=machine_learning&compareRunsMode=CHART",
             *RUNS, "test_accuracy", "val_qwk", "0.81", "0.69")  # fmt: skip
        time.sleep(1)  # the panel's closing animation
        driver.save_screenshot(str(tmp_path / "runs-charts.png"))
        # the run page: its metrics table, exact values
        show(driver, f"{runs_page}/{run.info.run_id}", "resnet18-pretrained-ui", "test_accuracy",
             "0.8125", "Finished")  # fmt: skip
        time.sleep(1)
        driver.save_screenshot(str(tmp_path / "run.png"))
    finally:
        driver.quit()
    print(f"screenshots: {tmp_path / 'runs-charts.png'}, {tmp_path / 'run.png'}")


def test_ctrl_c_stops_ui_and_server(ui):
    (server,) = children(ui.process.pid)
    ui.process.send_signal(signal.SIGINT)
    assert ui.process.wait(30) == 0
    assert "MLflow UI stopped" in ui.log.read_text()
    with pytest.raises(ProcessLookupError):
        os.killpg(server, 0)  # the server's whole process group is gone
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", ui.port))
