"""Notebooks 01-04 in a real JupyterLab, driven by Debian's Chromium through playwright: what a student sees.

The test starts its own JupyterLab (loopback, no token, a free port, a temporary root and settings) and stops
it by its process handle. Playwright never downloads a browser: it launches the system Chromium. Without
Chromium the test skips with the reason, except under CI=true where it fails. Each notebook runs with small
parameters (01 trains a 20-iteration run that 03 and 04 then take apart); after each Run All, every plotly
figure in the page must have a trace with data, no title may overlap the plotly toolbar or another title, a
figure must use the width of its output, and segmentation overlays must have a legend. Screenshots of every
figure and widget go to executed/screenshots/ (ignored by git) so that a failure can be seen.
"""

from __future__ import annotations

import json
import os
import re
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
NOTEBOOKS = REPO / "notebooks"
SCREENSHOTS = REPO / "executed" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1600, "height": 1000}  # the window
# Small runs, in this order: 01 trains run01 (8 phantoms of 32^3, 20 iterations, a meta round each), 03 and 04
# take it apart; 02 trains 40 iterations on 200 synthetic subjects (two meta rounds).
SMALL = {
    "01_brats_mckd": {"cases": 8, "iterations": 20, "run_dir": "run01"},
    "02_adni_mckd": {"subjects": 200, "epochs": 20, "run_dir": "run02"},
    "03_missing_modalities": {"source_run": "run01", "iterations": 20},
    "04_attributions": {"source_run": "run01", "iterations": 20, "ig_steps": 4, "run_dir": "run04"},
}

# The notebook panel showing a path (JupyterLab's main area), for the scripts below.
PANEL = """const panelOf = path => Array.from(window.jupyterapp.shell.widgets('main'))
  .find(w => w.context && w.context.path === path && w.content && w.content.model);"""
# Polled in the page: "running", "done", or "error: <cell outputs>" as soon as a cell fails.
NOTEBOOK_STATE = """path => { """ + PANEL + """
  const panel = panelOf(path);
  if (!panel) return 'running';
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
KERNEL_IDLE = """path => { if (!window.jupyterapp) return false; """ + PANEL + """
  const panel = panelOf(path);
  const session = panel && panel.sessionContext && panel.sessionContext.session;
  return Boolean(session && session.kernel && session.kernel.status === 'idle');
}"""
# Every plotly figure in the page: its traces, the boxes of its toolbar (modebar), titles (the figure's, the
# subplots' and the axes'), legend and plot areas, its width and that of the output holding it.
FIGURES = """path => { """ + PANEL + """
  return Array.from(panelOf(path).node.querySelectorAll('.js-plotly-plot')).map((gd, index) => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const area = b => Math.max(0, b[2] - b[0]) * Math.max(0, b[3] - b[1]);
  const meets = (a, b) => a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3];
  const plots = Array.from(gd.querySelectorAll('.nsewdrag')).map(box);
  const titles = [];
  const add = (e, kind) => { const b = box(e); if (e.textContent.trim() && area(b) > 0)
    titles.push({kind, text: e.textContent.trim(), box: b}); };
  gd.querySelectorAll('.gtitle').forEach(e => add(e, 'figure'));
  gd.querySelectorAll('.annotation').forEach(e => { if (!plots.some(p => meets(p, box(e)))) add(e, 'subplot'); });
  gd.querySelectorAll('.infolayer > g[class^="g-x"][class$="title"], .infolayer > g[class^="g-y"][class$="title"]')
    .forEach(e => add(e, 'axis'));
  const filled = t => ['x', 'y', 'z'].some(a => t[a] && t[a].length && Array.from(t[a]).flat().some(v => v !== null));
  const modebar = gd.querySelector('.modebar');
  const legend = gd.querySelector('.legend');
  const output = gd.closest('.jp-OutputArea-output') || gd.parentElement;
  return {
    index, traces: (gd.data || []).length, withData: (gd.data || []).filter(filled).length,
    names: (gd.data || []).map(t => t.name || ''),
    title: (gd.layout && gd.layout.title && (gd.layout.title.text || gd.layout.title)) || '',
    modebar: modebar ? box(modebar) : null, titles,
    legend: legend ? legend.textContent : '', legendBox: legend ? box(legend) : null,
    width: box(gd.querySelector('.main-svg'))[2] - box(gd.querySelector('.main-svg'))[0],
    outputWidth: box(output)[2] - box(output)[0],
  };
}); }"""
WEIGHTS = """path => { """ + PANEL + """
  const gd = panelOf(path).node.querySelector('.mckd-importanceweightsview .js-plotly-plot');
  return gd ? gd.data.map(t => [t.name, Array.from(t.x || []), Array.from(t.y || [])]) : null;
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


def _settings(home: Path) -> None:
    """No news prompt over the screenshots; every cell kept in the page (no windowing), so that the checks see
    every figure and not only those scrolled into view."""
    settings = {
        "apputils-extension/notification": {"fetchNews": "false"},
        "notebook-extension/tracker": {"windowingMode": "none"},
    }
    for name, values in settings.items():
        path = home / "settings" / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


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
    _settings(home)
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


def prepare_notebook(root: Path, name: str, parameters: dict) -> Path:
    """Copy notebook ``name`` into ``root`` with ``parameters`` injected after its `parameters` cell."""
    import papermill

    from mckd_lab.experiments import notebook_parameters

    source = NOTEBOOKS / f"{name}.ipynb"
    unknown = set(parameters) - set(notebook_parameters(source))
    assert not unknown, f"{source.name} has no parameters {sorted(unknown)}: update SMALL in {__file__}"
    target = root / source.name
    papermill.execute_notebook(
        str(source), str(target), parameters=parameters, prepare_only=True, cwd=str(root)
    )
    return target


def screenshots(page, name: str) -> None:
    """Every output that holds a figure or a widget, one PNG each, under executed/screenshots/<name>_*.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob(f"{name}_*.png"):
        old.unlink()
    outputs = page.locator(".jp-OutputArea-output:has(.js-plotly-plot), .jp-OutputArea-output:has(.widget-box)")
    for k in range(outputs.count()):
        outputs.nth(k).scroll_into_view_if_needed()
        outputs.nth(k).screenshot(path=str(SCREENSHOTS / f"{name}_{k:02d}.png"))


def open_notebook(page, url: str, notebook: str) -> None:
    """Open ``notebook`` in the running JupyterLab (loading JupyterLab first if needed) and wait for its idle
    kernel."""
    if "/lab" not in page.url:
        page.goto(f"{url}/lab/tree/{notebook}")
    else:
        page.evaluate("path => { window.jupyterapp.commands.execute('docmanager:open', {path}); }", notebook)
    page.wait_for_function(KERNEL_IDLE, arg=notebook, timeout=180_000)


def run_all_cells(page, notebook: str, timeout_s: float = 600) -> None:
    """Run All in ``notebook`` (made the current tab first) and wait until every cell has run."""
    page.evaluate(
        """path => { """ + PANEL + """
          const panel = panelOf(path);
          window.jupyterapp.shell.activateById(panel.id);
          return window.jupyterapp.commands.execute('notebook:run-all-cells').then(() => true);
        }""",
        notebook,
    )
    time.sleep(1)  # the first cell's execution count clears before the state is polled
    deadline = time.monotonic() + timeout_s
    while (state := page.evaluate(NOTEBOOK_STATE, notebook)) == "running":
        if time.monotonic() > deadline:
            raise AssertionError(f"{notebook}: cells still running after {timeout_s} s")
        time.sleep(1)
    assert state == "done", f"{notebook}: a cell failed in JupyterLab: {state}"
    page.wait_for_timeout(1500)  # let plotly draw the last figures


def close_notebook(page, notebook: str, console_errors: list[str]) -> None:
    """Shut ``notebook``'s kernel down and close it without saving (its kernel's memory goes back). Widgets
    still on the page then fail to sync with the gone kernel: those console errors are the test's doing and are
    dropped from ``console_errors``."""
    before = len(console_errors)
    page.evaluate(
        """async path => { """ + PANEL + """
          const panel = panelOf(path);
          await panel.sessionContext.shutdown();
          panel.context.model.dirty = false;
          panel.dispose();
        }""",
        notebook,
    )
    page.wait_for_timeout(500)
    console_errors[before:] = [e for e in console_errors[before:] if "Could not send widget sync message" not in e]


def overlap(a: list[float], b: list[float], slack: float = 1.0) -> bool:
    """Whether two boxes [left, top, right, bottom] (px) overlap by more than ``slack`` on both axes."""
    return min(a[2], b[2]) - max(a[0], b[0]) > slack and min(a[3], b[3]) - max(a[1], b[1]) > slack


def open_and_run(page, url: str, notebook: str) -> list[dict]:
    """Open a notebook, Run All, and check its figures (``check_figures``, whose list it returns)."""
    open_notebook(page, url, notebook)
    run_all_cells(page, notebook)
    return check_figures(page, notebook)


def check_figures(page, notebook: str) -> list[dict]:
    """The notebook's figures, each checked: data, titles clear of the toolbar and of each other, full width,
    overlays with a legend. Returns them for the notebook's own checks."""
    figures = page.evaluate(FIGURES, notebook)
    assert figures, f"{notebook}: no plotly figure in the page"
    assert page.get_by_text("Error displaying widget").count() == 0, f"{notebook}: a widget failed to display"
    for fig in figures:
        where = f"{notebook}, figure {fig['index']} ({fig['title'][:60]!r})"
        assert fig["withData"] >= 1, f"{where}: no trace with data ({fig['traces']} traces)"
        assert fig["modebar"] is not None, f"{where}: no plotly toolbar found"
        for t in fig["titles"]:
            assert not overlap(t["box"], fig["modebar"]), (
                f"{where}: {t['kind']} title {t['text']!r} {t['box']} under the toolbar {fig['modebar']}"
            )
        for i, a in enumerate(fig["titles"]):
            for b in fig["titles"][i + 1 :]:
                assert not overlap(a["box"], b["box"]), f"{where}: titles {a['text']!r} and {b['text']!r} overlap"
        if fig["legendBox"] is not None:
            assert not overlap(fig["legendBox"], fig["modebar"]), f"{where}: the legend is under the toolbar"
        assert fig["width"] >= 0.95 * fig["outputWidth"], (
            f"{where}: {fig['width']:.0f} px wide in an output of {fig['outputWidth']:.0f} px"
        )
        if any(re.fullmatch(r"(ET|TC|WT) (ground truth|prediction)", n) for n in fig["names"]):  # overlays
            for word in ("ET", "TC", "WT", "ground truth"):
                assert word in fig["legend"], f"{where}: the overlay legend lacks {word!r}: {fig['legend']!r}"
    return figures


def test_notebooks_01_to_04_draw_every_figure_legibly_in_jupyterlab(tmp_path):
    executable = chromium()
    from playwright.sync_api import sync_playwright

    root = tmp_path / "root"
    root.mkdir()
    for name, parameters in SMALL.items():
        prepare_notebook(root, name, parameters)
    with jupyterlab(root, tmp_path / "home") as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            console_errors = []
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)

            # 01: train, then Run All again: the finished run is reused and draws the same weights
            nb01 = "01_brats_mckd.ipynb"
            open_and_run(page, url, nb01)
            first = page.evaluate(WEIGHTS, nb01)
            assert first and all(len(x) == 20 for _, x, _ in first), f"01: weights drawn: {first}"
            progress = page.locator(".widget-html-content", has_text=re.compile(r"\d+/\d+\s\[\d+:\d+<\d+:\d+"))
            assert progress.count() >= 1 and progress.first.is_visible(), "01: no training bar with its ETA"
            screenshots(page, "01_brats_mckd")
            run_all_cells(page, nb01)
            assert page.evaluate(WEIGHTS, nb01) == first, "01: run again, the reused run draws other weights"
            check_figures(page, nb01)
            close_notebook(page, nb01, console_errors)

            nb02 = "02_adni_mckd.ipynb"
            open_and_run(page, url, nb02)
            weights = page.evaluate(WEIGHTS, nb02)
            assert weights and all(len(x) == 2 for _, x, _ in weights), f"02: weights drawn: {weights}"
            assert page.locator("table").filter(has_text="bal acc").count() >= 1  # a rendered table, not text
            screenshots(page, "02_adni_mckd")
            close_notebook(page, nb02, console_errors)

            nb03 = "03_missing_modalities.ipynb"
            open_and_run(page, url, nb03)
            explorer = page.locator(".mckd-modalitydropexplorer")
            assert explorer.count() == 1, "notebook 03 shows one modality drop explorer"
            screenshots(page, "03_missing_modalities")
            plot = explorer.locator(".js-plotly-plot")
            plot.scroll_into_view_if_needed()
            plot_before = plot.screenshot()
            sequence = explorer.locator(".widget-dropdown select").first
            assert sequence.input_value() == "flair"
            # untick FLAIR: the prediction is decoded again, and the viewer stops showing FLAIR
            explorer.locator(".widget-checkbox", has_text="flair").locator("input").uncheck()
            explorer.get_by_text("filled (mean of the present bottlenecks): flair").wait_for(timeout=60_000)
            page.wait_for_function(
                "() => document.querySelector('.mckd-modalitydropexplorer .widget-dropdown select').value !== 'flair'",
                timeout=60_000,
            )
            page.wait_for_timeout(1500)  # let plotly draw
            assert plot.screenshot() != plot_before, "the segmentation view did not change after unticking flair"
            title = page.evaluate(
                "() => document.querySelector('.mckd-modalitydropexplorer .js-plotly-plot').layout.title.text"
            )
            assert "flair" not in title.split("<br>")[0], f"the viewer still shows flair: {title!r}"
            explorer.locator(".widget-checkbox", has_text="t1ce").locator("input").uncheck()
            explorer.get_by_text("filled (mean of the present bottlenecks): flair, t1ce").wait_for(timeout=60_000)
            options = sequence.locator("option").all_inner_texts()
            assert options == ["t1", "t2"], f"the sequences offered are not the ticked ones: {options}"
            explorer.screenshot(path=str(SCREENSHOTS / "03_missing_modalities_without_flair_t1ce.png"))
            close_notebook(page, nb03, console_errors)

            nb04 = "04_attributions.ipynb"
            figures = open_and_run(page, url, nb04)
            attribution = next(f for f in figures if "Shapley" in f["title"])
            assert "% of |F(x) − F(0)|" in json.dumps(page.evaluate(
                "() => Array.from(document.querySelectorAll('.colorbar')).map(c => c.textContent)"
            ), ensure_ascii=False)
            assert any("Shapley value φ" in t["text"] for t in attribution["titles"]), attribution["titles"]
            assert not page.get_by_text(re.compile(r"^F\(x\) - F\(0\) =")).count()  # no bare number
            screenshots(page, "04_attributions")

            assert page.get_by_text("Error displaying widget").count() == 0
            assert not [e for e in console_errors if "widget" in e.lower()], console_errors
        finally:
            browser.close()
