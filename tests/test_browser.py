"""In a real browser: the explorer live in JupyterLab, and the HTML report as Chromium shows it.

JupyterLab is started here on 127.0.0.1 (a free port, a token, stopped at the end) and Debian's
Chromium is driven headless by selenium through the system's chromedriver. Without Chromium the
tests skip, saying what to install (CI installs it: apt-get install chromium chromium-driver).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from helpers import free_port
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Chromium not installed (Debian: apt-get install -y chromium chromium-driver)",
)
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
# A notebook that shows the explorer over a tiny model and a few generated images.
EXPLORER_CELLS = [
    """import numpy as np, torch
from vitlib.data import ImageDataset
from vitlib.explore import explore
from vitlib.model import build_vit

torch.manual_seed(0)
model = build_vit("vit_custom", num_classes=2, img_size=32, patch_size=8, embed_dim=32,
                  depth=4, num_heads=2).eval()
model.classes = ("cat", "dog")
images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
test = ImageDataset(images, np.array([0, 1, 0, 1]), [f"{i}.png" for i in range(4)],
                    mean=model.pretrained_cfg["mean"], std=model.pretrained_cfg["std"])""",
    'explorer = explore(model, test, method="attention")\nexplorer',
]


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def _jupyter_env(folder: Path) -> dict[str, str]:
    """This machine's environment with Jupyter's per-user folders under `folder`: the user's
    settings, workspaces and runtime files are neither read nor written."""
    env = dict(os.environ)
    for name, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                      ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                      ("JUPYTERLAB_WORKSPACES_DIR", "workspaces")):  # fmt: skip
        env[name] = str(folder / "jupyter" / sub)
    return env


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving tmp_path: (base URL, token)."""
    port, token = free_port(), secrets.token_hex(16)
    log = open(tmp_path / "jupyterlab.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
         "--ServerApp.port_retries=0", "--allow-root",  # CI runs as root
         # the legacy (JSON) kernel websocket protocol: the binary v1 one failed to decode here
         "--ZMQChannelsWebsocketConnection.kernel_ws_protocol="],
        stdout=log, stderr=subprocess.STDOUT, env=_jupyter_env(tmp_path),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp_path / "jupyterlab.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _wait(driver, condition, timeout=90, what="condition"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition, message=f"timed out waiting for {what}")


def _image_pixels(driver, element) -> str:
    """The shown image's pixels, as the browser decoded them (a PNG data URL of a canvas)."""
    return driver.execute_script(
        "const img = arguments[0]; const c = document.createElement('canvas');"
        "c.width = img.naturalWidth; c.height = img.naturalHeight;"
        "c.getContext('2d').drawImage(img, 0, 0); return c.toDataURL();",
        element,
    )


def test_the_explorer_runs_in_jupyterlab_and_a_slider_move_redraws(lab, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    book = new_notebook(cells=[new_code_cell(c) for c in EXPLORER_CELLS])
    book.metadata["kernelspec"] = KERNELSPEC
    nbformat.write(book, tmp_path / "explorer.ipynb")
    base, token = lab
    browser.get(f"{base}/lab/tree/explorer.ipynb?token={token}")
    try:
        _run_all_cells(browser)
        view = _wait(browser, lambda d: _loaded_view(d), what="the explorer's image")
    finally:
        browser.save_screenshot(str(tmp_path / "explorer_jupyterlab.png"))
    layer = browser.find_element(
        By.XPATH, "//div[contains(@class,'widget-slider')][.//label[normalize-space()='layer']]"
    )
    readout = layer.find_element(By.CSS_SELECTOR, ".widget-readout")
    assert readout.text == "4"
    browser.execute_script(
        "window.__moves = []; const img = arguments[0];"
        "document.addEventListener('keydown', () => { window.__pressed = performance.now(); }, true);"
        "new MutationObserver(() => window.__moves.push(performance.now() - window.__pressed))"
        ".observe(img, {attributes: true, attributeFilter: ['src']});",
        view,
    )  # fmt: skip
    handle = layer.find_element(By.CSS_SELECTOR, ".noUi-handle")
    seen = [_image_pixels(browser, view)]
    for expected in ("3", "2", "1"):
        moves = len(browser.execute_script("return window.__moves"))
        handle.send_keys(Keys.ARROW_LEFT)
        _wait(browser, lambda d, n=moves: len(d.execute_script("return window.__moves")) > n,
              timeout=30, what="a redraw")  # fmt: skip
        _wait(browser, lambda d: d.execute_script("return arguments[0].complete", view), 10)
        assert readout.text == expected
        seen.append(_image_pixels(browser, view))
    assert len(set(seen)) == len(seen), "the picture did not change with the layer"
    milliseconds = browser.execute_script("return window.__moves")
    browser.save_screenshot(str(tmp_path / "explorer_jupyterlab.png"))
    print(f"slider move to new picture: {sorted(milliseconds)} ms; {tmp_path}")
    assert max(milliseconds) < 5000


def _run_all_cells(driver) -> None:
    """The notebook toolbar's "restart the kernel and run all cells", confirmed."""
    from selenium.webdriver.common.by import By

    button = "[data-command='notebook:restart-run-all']"
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"), what="nb")
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, button), what="the toolbar")
    # A restart clicked while the new kernel is still connecting loses the cells' requests (a
    # fresh clone's first start, CI): wait until the status bar says the kernel is idle.
    idle = "return (document.querySelector('#jp-main-statusbar') || {}).innerText || ''"
    _wait(driver, lambda d: "| Idle" in d.execute_script(idle), what="an idle kernel")
    driver.find_element(By.CSS_SELECTOR, button).click()
    accept = ".jp-Dialog .jp-mod-accept"
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, accept), what="the restart dialog")
    driver.find_element(By.CSS_SELECTOR, accept).click()


def _loaded_view(driver):
    from selenium.webdriver.common.by import By

    for img in driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output .widget-image"):
        if driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img):
            return img
    return None


def test_the_report_shows_every_image_with_alt_text_and_no_console_errors(browser, tmp_path):
    from vitlib.report import run_report

    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    book = new_notebook(cells=[
        new_markdown_cell("# 01 · A figure\n\nA confusion matrix drawn by vitlib.viz."),
        new_code_cell("from vitlib import viz\nviz.plot_confusion_matrix([[5, 1], [2, 7]], "
                      "['cat', 'dog'])"),
        new_markdown_cell("# 02 · The explorer\n\nIts still, where no kernel runs."),
        new_code_cell("\n".join(EXPLORER_CELLS)),
    ])  # fmt: skip
    book.metadata["kernelspec"] = KERNELSPEC
    nbformat.write(book, project / "notebooks" / "01_tiny.ipynb")
    html = run_report("smoke", project_dir=project, notebooks=("01_tiny",), progress=False)
    browser.get(html.as_uri())
    images = browser.execute_script(
        "return [...document.images].map(i => [i.complete && i.naturalWidth > 0, i.alt])"
    )
    assert len(images) == 2 and all(decoded for decoded, _ in images), images
    assert all(alt and "No description" not in alt for _, alt in images), images
    assert "Figure: Confusion matrix" in images[0][1]
    assert "Attention explorer" in images[1][1]
    links = browser.execute_script(
        "return [...document.querySelectorAll('a[href^=\"#section-\"]')]"
        ".map(a => [a.textContent, !!document.getElementById(a.hash.slice(1))])"
    )
    assert links == [["01 · A figure", True]]  # one entry per notebook, at its first heading
    assert browser.find_element("css selector", "table").text.startswith("experiment")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], json.dumps(errors, indent=1)
    assert not browser.execute_script("return document.querySelector('.jupyter-widgets, script"
                                      "[type*=\"widget\"]')")  # fmt: skip
    browser.save_screenshot(str(tmp_path / "report_top.png"))
    print(f"report screenshot: {tmp_path / 'report_top.png'}")
    assert Path(html).read_text().count("<img") == 2
