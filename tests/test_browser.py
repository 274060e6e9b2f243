"""notebooks/03_missing_modalities.ipynb in a real JupyterLab, driven by Debian's Chromium through playwright.

The test starts its own JupyterLab (loopback, no token, a free port, a temporary root and settings) and stops
it by its process handle. Playwright never downloads a browser: it launches the system Chromium. Without
Chromium the test skips with the reason, except under CI=true where it fails. Screenshots go to the test's
tmp_path and to outputs/browser/ at the repository root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "03_missing_modalities.ipynb"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Notebook 03 trains a tiny run of its own (phantoms at 32^3, 4 iterations) into root/run.
SMALL = {"source_run": "run", "iterations": 4, "size": 32}

# Polled in the page: "running", "done", or "error: <cell outputs>" as soon as a cell fails.
NOTEBOOK_STATE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = panel.content.model.cells;
  let pending = false;
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type !== 'code') continue;
    const outputs = cell.outputs.toJSON();
    const error = outputs.find(o => o.output_type === 'error');
    if (error) return 'error: ' + error.ename + ': ' + error.evalue;
    const bad = outputs.find(o => o.output_type === 'stream' && /serialization failed|Error displaying widget/
      .test([].concat(o.text).join('')));
    if (bad) return 'error: ' + [].concat(bad.text).join('');
    if (cell.executionCount === null) pending = true;
  }
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !pending && kernel && kernel.status === 'idle' ? 'done' : 'running';
}"""
KERNEL_IDLE = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const session = panel && panel.sessionContext && panel.sessionContext.session;
  return Boolean(session && session.kernel && session.kernel.status === 'idle');
}"""


def chromium() -> str:
    """The system Chromium, or skip (fail under CI=true) saying how to install it."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    reason = (
        "no Chromium found (/usr/bin/chromium, chromium or chromium-browser on PATH); on Debian/Ubuntu as "
        "root: apt-get install -y chromium (make test does it); the browser test never downloads one"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyterlab(root: Path, home: Path):
    """A JupyterLab server on a free loopback port serving ``root``; yields its URL, stops it on exit."""
    port = free_port()
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        IPYTHONDIR=str(home / "ipython"),
    )
    news = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True, exist_ok=True)
    news.write_text('{"fetchNews": "false"}')  # no news prompt over the screenshots
    log = (home / "jupyterlab.log").open("w")
    command = [
        sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser", "--ip=127.0.0.1",
        f"--port={port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
        f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
    ]  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise RuntimeError(
                    f"JupyterLab exited with {server.returncode}; see {home / 'jupyterlab.log'}"
                )
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not answer on {url} in 120 s") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def prepare_notebook(root: Path, parameters: dict) -> Path:
    """Copy notebook 03 into ``root`` with ``parameters`` injected after its `parameters` cell (papermill)."""
    import papermill

    from mckd_lab.experiments import notebook_parameters

    unknown = set(parameters) - set(notebook_parameters(NOTEBOOK))
    assert not unknown, f"{NOTEBOOK.name} has no parameters {sorted(unknown)}: update SMALL in {__file__}"
    target = root / NOTEBOOK.name
    papermill.execute_notebook(
        str(NOTEBOOK), str(target), parameters=parameters, prepare_only=True, cwd=str(root)
    )
    return target


def save_screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    keep = REPO / "outputs" / "browser"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, keep / name)
    return path


def run_all_cells(page, url: str, notebook: str, timeout_s: float = 300) -> None:
    page.goto(f"{url}/lab/tree/{notebook}")
    page.wait_for_function(KERNEL_IDLE, timeout=120_000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    deadline = time.monotonic() + timeout_s
    while (state := page.evaluate(NOTEBOOK_STATE)) == "running":
        if time.monotonic() > deadline:
            raise AssertionError(f"{notebook}: cells still running after {timeout_s} s")
        time.sleep(1)
    assert state == "done", f"{notebook}: a cell failed in JupyterLab: {state}"


def test_notebook_03_widgets_in_jupyterlab(tmp_path):
    executable = chromium()
    from playwright.sync_api import sync_playwright

    assert NOTEBOOK.is_file(), f"{NOTEBOOK} is missing: the browser test opens it"
    root = tmp_path / "root"
    root.mkdir()
    notebook = prepare_notebook(root, SMALL)
    with jupyterlab(root, tmp_path / "home") as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            console_errors = []
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            run_all_cells(page, url, notebook.name)
            page.wait_for_selector(".mckd-dice", timeout=60_000)
            assert page.locator(".js-plotly-plot").count() >= 2
            assert page.get_by_text("Error displaying widget").count() == 0
            assert not [e for e in console_errors if "widget" in e.lower()], console_errors

            explorer = page.locator(".mckd-modalitydropexplorer")
            assert explorer.count() == 1, "notebook 03 shows one modality drop explorer"
            dice = explorer.locator(".mckd-dice")
            plot = explorer.locator(".js-plotly-plot")
            plot.scroll_into_view_if_needed()
            dice_before, plot_before = dice.inner_text(), plot.screenshot()
            save_screenshot(page, tmp_path, "notebook03_all_modalities.png")
            explorer.locator(".widget-checkbox", has_text="t1ce").locator("input").uncheck()
            page.wait_for_function(
                "old => document.querySelector('.mckd-modalitydropexplorer .mckd-dice').innerText !== old",
                arg=dice_before,
                timeout=30_000,
            )
            page.wait_for_timeout(1000)  # let plotly draw the new overlay
            assert plot.screenshot() != plot_before, (
                "the segmentation view did not change after unticking t1ce"
            )
            assert "filled (mean of the present bottlenecks): t1ce" in explorer.inner_text()
            save_screenshot(page, tmp_path, "notebook03_without_t1ce.png")
        finally:
            browser.close()
