"""`retino ui` and `dvc plots show` as a user opens them, in a real browser.

The store holds a 2x2 grid logged through retino.tracking (tests/tracking/ui_runs.py): no
training. The browser is Debian's `chromium` + `chromium-driver`, driven by Selenium, with every
host name but loopback unresolvable: nothing may leave the machine. Without them the browser
tests skip on a developer machine, but fail under CI (CI=true), where .ci/run installs them.
With RETINO_SCREENSHOTS=<folder> the views the README shows are also saved there (docs/).
The UI is started once for the module; the Ctrl-C test stops it, so it comes last.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from retino.evaluation.plots import plot_confusion, plot_curves
from tests.conftest import ROOT
from tests.dvc_project import project_env, run
from tests.tracking.ui_runs import (
    GRID,
    SPREAD,
    confusion,
    history,
    log_grid,
    ranked,
    run_names,
)

pytestmark = pytest.mark.slow  # a real MLflow server and Chromium

RETINO = str(Path(sys.executable).with_name("retino"))
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--window-size=1920,1080",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # loopback only
)  # fmt: skip


@dataclass
class Ui:
    root: Path
    port: int
    url: str
    link: str  # what `retino ui` prints: the runs page, as the README's view
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


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """`retino ui` in a git workspace with the 2x2 grid in its store (root = git top level)."""
    root = tmp_path_factory.mktemp("ui")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True, timeout=30)
    (root / "figures").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("DVC_ROOT", raising=False)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        log_grid(root, root / "figures")
    port = free_port()
    log = root / "ui.log"
    with open(log, "w") as out:
        process = subprocess.Popen([RETINO, "ui", "--port", str(port)], cwd=root,
                                   env=project_env(), stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        start = time.monotonic()
        url = f"http://127.0.0.1:{port}"

        def printed():
            done = process.poll() is not None
            return done or re.search(rf"MLflow UI: ({re.escape(url)}/\S+)", log.read_text())

        found = wait_for(printed, 240, "retino ui to print its URL")
        assert process.poll() is None, log.read_text()
        print(f"retino ui: URL printed after {time.monotonic() - start:.1f} s")
        yield Ui(root, port, url, found.group(1), process, log)
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
    assert {r.data.tags["dvc_exp_name"]: r.info.run_name for r in runs} == run_names()
    # the printed link: the runs page in model-training mode, with the view retino saved
    assert ui.link == (f"{ui.url}/#/experiments/{experiment.experiment_id}/runs"
                       "?workflowType=machine_learning&viewStateShareKey=retino")  # fmt: skip
    view = json.loads(experiment.tags["mlflow.sharedViewState.retino"])
    assert view["orderByKey"] == "metrics.`best/test_qwk`" and view["orderByAsc"] is False


def test_busy_port_is_a_one_line_error(ui, tmp_path):
    # answered before mlflow is imported: here an import of it would fail the command
    (tmp_path / "mlflow").mkdir()
    (tmp_path / "mlflow" / "__init__.py").write_text("raise ImportError('mlflow imported')\n")
    env = {**project_env(), "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([RETINO, "ui", "--port", str(ui.port)], cwd=ui.root, env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2
    assert out.stderr == f"error: port {ui.port} on 127.0.0.1 is in use (another MLflow UI?); " \
        f"pick another with --port {ui.port + 1}\n"  # fmt: skip


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


def page_text(driver) -> str:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except WebDriverException:  # the page is being re-rendered
        return ""


def show(driver, url: str, *texts: str) -> str:
    """Open `url` and wait until the page shows every text: a single-page app, so poll."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    shown = lambda: (lambda t: t if all(x in t for x in texts) else "")(page_text(driver))  # noqa: E731
    text = wait_for(shown, 90, f"{texts} on {url}")
    # the Assistant side panel opens by default and covers a third of the page
    for button in driver.find_elements(
        By.CSS_SELECTOR, '[data-component-id="mlflow.assistant.chat_panel.close"]'
    ):
        button.click()
    return text


def screenshot(driver, name: str, folder: Path) -> None:
    """`name` in `folder`, and in $RETINO_SCREENSHOTS when set (the README's figures)."""
    # transitions ended and no spinner in view; charts below the fold load (and spin) only
    # once scrolled to, so endless animations outside the viewport are left alone
    settled = """return document.getAnimations().every(a => {
        if (a.playState !== 'running') return true;
        if (a.effect.getComputedTiming().endTime !== Infinity) return false;
        const box = a.effect.target ? a.effect.target.getBoundingClientRect() : null;
        return !box || box.bottom < 0 || box.top > window.innerHeight || !box.width;
    })"""
    wait_for(lambda: driver.execute_script(settled), 60, f"the view to settle before {name}")
    driver.save_screenshot(str(folder / name))
    if os.environ.get("RETINO_SCREENSHOTS"):
        shutil.copy(folder / name, Path(os.environ["RETINO_SCREENSHOTS"], name))


def test_link_opens_runs_ranked_by_test_qwk(ui, tmp_path):
    driver = browser()
    try:
        show(driver, ui.link, *run_names().values(), "arch", "pretrained", "best/test_qwk",
             "best/test_accuracy", "Dataset")  # fmt: skip
        # the table, row by row (the grid draws pinned and scrolling columns apart)
        cells = """const rows = {};
            for (const cell of document.querySelectorAll('.ag-row [col-id]')) {
                const row = cell.closest('.ag-row').getAttribute('row-index');
                (rows[row] = rows[row] || {})[cell.getAttribute('col-id')] = cell.innerText;
            }
            return Object.keys(rows).sort((a, b) => a - b).map(k => rows[k]);"""
        table = driver.execute_script(cells)
        names = [row["attributes.`Run Name`"].splitlines()[-1] for row in table]  # after a colour
        # best.pt's test QWK ranks the runs; each name says which variant ran
        assert names == ranked(), table
        for name, row in zip(names, table, strict=True):
            arch, pretrained, qwk, _ = GRID[name.split("-", 2)[2]]
            assert row["params.`arch`"] == arch and row["params.`pretrained`"] == str(pretrained)
            assert row["metrics.`best/test_qwk`"] == f"{qwk:.2f}"
            # beside it, its interval
            assert row["metrics.`best/test_qwk_lo`"] == f"{qwk - SPREAD:.2f}"
            assert row["metrics.`best/test_qwk_hi`"] == f"{qwk + SPREAD:.2f}"
            # the Dataset column: the split tables by context
            assert "train (" in row["attributes.`Dataset`"]
            assert "Training" in row["attributes.`Dataset`"]
        screenshot(driver, "mlflow-runs-table.png", tmp_path)
    finally:
        driver.quit()


def chart_sections(text: str) -> dict[str, int]:
    """Section title -> number of charts, as the chart view lists them: 'best\\n(6)'."""
    return {name: int(n) for name, n in re.findall(r"^([^\n]+)\n\((\d+)\)$", text, re.M)}


def test_charts_by_section_and_confusion_image_grid(ui, tmp_path):
    from selenium.webdriver.common.by import By

    driver = browser()
    try:
        text = show(driver, f"{ui.link}&compareRunsMode=CHART", "Compare runs", "best/test_qwk",
                    "train/qwk vs val/qwk", "confusion")  # fmt: skip
        sections = chart_sections(text)
        assert next(iter(sections)) == "Compare runs"  # the comparison, then one per prefix
        assert {"best", "train", "val", "test", "per_grade"} <= set(sections), sections
        assert sections["per_grade"] == 10 and sections["Compare runs"] == 3
        screenshot(driver, "mlflow-charts.png", tmp_path)

        # the confusion matrices side by side: one image per run, each loaded
        card = "//*[text()='confusion']/ancestor::div[.//button][1]"
        driver.find_element(By.XPATH, f"{card}//*[@data-component-id="
                            "'fullscreen_button_chartcard']").click()  # fmt: skip
        loaded = """return [...document.querySelectorAll('[role=dialog] img')]
            .filter(i => i.src.includes('confusion') && i.complete && i.naturalWidth > 0)
            .length"""
        wait_for(lambda: driver.execute_script(loaded) == len(GRID), 60, "4 confusion images")
        dialog = page_text(driver)
        assert all(name in dialog for name in run_names().values())
        screenshot(driver, "mlflow-confusion-grid.png", tmp_path)
    finally:
        driver.quit()


def plots_project(root: Path) -> Path:
    """A git + DVC repo with this project's dvc.yaml and .dvc/config [plots] section, the
    offline template, and the plot files a finished pipeline leaves (made up here)."""
    run(["git", "init", "-q"], root, project_env())
    run(["dvc", "init", "-q"], root, project_env())
    shutil.copy2(ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(ROOT / "docs", root / "docs", ignore=shutil.ignore_patterns("*.png"))
    template = re.search(r"html_template = (\S+)", (ROOT / ".dvc" / "config").read_text())
    assert template, ".dvc/config names no plots.html_template"
    run(["dvc", "config", "plots.html_template", template.group(1)], root, project_env())
    table = pd.DataFrame(history(0.8))
    (root / "reports" / "train").mkdir(parents=True)
    table.to_csv(root / "reports" / "train" / "history.csv", index=False)
    cm = confusion(0.8)
    labels = np.repeat(np.arange(5), cm.sum(1))
    predicted = np.concatenate([np.repeat(np.arange(5), row) for row in cm])
    (root / "reports" / "eval").mkdir(parents=True)
    pd.DataFrame({"image": [f"images/{i}.jpeg" for i in range(len(labels))], "label": labels,
                  "predicted": predicted}).to_csv(root / "reports/eval/predictions.csv",
                                                  index=False)  # fmt: skip
    plot_curves(table, root / "reports/figures/curves.png")
    plot_confusion(cm, root / "reports/figures/confusion.png")
    return root


def test_dvc_plots_draw_offline(tmp_path):
    from selenium.webdriver.common.by import By

    project = plots_project(tmp_path)
    run(["dvc", "plots", "show"], project, project_env(), timeout=120)  # no flag: the config
    page = project / "dvc_plots" / "index.html"
    assert "cdn.jsdelivr.net" not in page.read_text()
    driver = browser()
    try:
        driver.get(page.as_uri())
        # every Vega chart drawn: a canvas with coloured pixels (marks, not just a blank frame)
        drawn = """return [...document.querySelectorAll('.vega-embed')].map(e => {
            const c = e.querySelector('canvas');
            if (!c || !c.width) return 0;
            const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let marks = 0;
            for (let i = 0; i < px.length; i += 4)
                if (px[i + 3] > 0 && (px[i] < 200 || px[i + 1] < 200 || px[i + 2] < 200)) marks++;
            return marks;
        })"""
        charts = wait_for(lambda: (lambda m: m if len(m) >= 4 and all(m) else None)(
            driver.execute_script(drawn)), 60, "the Vega charts to draw")  # fmt: skip
        ids = [e.get_attribute("id") for e in driver.find_elements(By.CSS_SELECTOR, "div[id]")]
        assert {"Accuracy", "QWK", "Loss"} <= set(ids), ids
        assert any(i.startswith("Confusion") for i in ids), ids
        print(f"{len(charts)} charts, pixels drawn: {charts}")
        images = "return [...document.images].filter(i => i.naturalWidth > 0).length"
        assert driver.execute_script(images) == 2  # reports/figures/*.png
        # nothing was fetched from anywhere but the page itself
        fetched = driver.execute_script(
            "return performance.getEntriesByType('resource').map(r => r.name)"
        )
        assert all(name.startswith("file:") for name in fetched), fetched
        screenshot(driver, "dvc-plots.png", tmp_path)
    finally:
        driver.quit()


def test_ctrl_c_stops_ui_and_server(ui):
    (server,) = children(ui.process.pid)
    ui.process.send_signal(signal.SIGINT)
    assert ui.process.wait(30) == 0
    assert "MLflow UI stopped" in ui.log.read_text()
    with pytest.raises(ProcessLookupError):
        os.killpg(server, 0)  # the server's whole process group is gone
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", ui.port))
