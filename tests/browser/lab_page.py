"""What the browser check does in a JupyterLab page: open a notebook, run all cells, look for
what a learner would see broken, move the sliders, take a screenshot.

JupyterLab runs with ``--LabApp.expose_app_in_browser``, so the page's ``window.jupyterapp`` gives
the notebook's cells, their outputs and the kernel's state; what is checked is what the page shows.

Part of the browser check (``make test-browser``, tests/browser/check_lessons.py).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["Defect", "check_page", "move_sliders", "open_notebook", "run_all", "save_and_close", "screenshot",
           "sliders"]

#: The notebook panel and its kernel, from the page.
PANEL = "const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;"

#: The text repr of an ipywidget ("HBox(children=...", "interactive(children=..."), shown where the
#: widget should be.
WIDGET_REPR = (r"^\s*(interactive|[A-Z][A-Za-z]*(Box|Slider|Progress|Text|Button|Buttons|Picker)|Output|HTML|"
               r"HTMLMath|Label|Dropdown|Checkbox|Select|SelectMultiple|RadioButtons|Tab|Accordion|Image|Play)"
               r"\((children|value|options|layout|description|outputs|_dom_classes|max|min)=")

FIND_DEFECTS = PANEL + r"""
const REPR = new RegExp(arguments[0], 'm');
const out = [];
const add = (i, kind, detail) => out.push([i, kind, String(detail).trim().slice(0, 400)]);
const lineWith = (text, word) => (text.split('\n').find(l => l.includes(word)) || word);
panel.content.widgets.forEach((cell, i) => {
  const node = cell.node, text = node.innerText || '';
  if (cell.model.type === 'code') {
    cell.model.outputs.toJSON().forEach((o, j) => {
      if (o.output_type === 'error') add(i, 'error output', o.ename + ': ' + o.evalue);
      const child = cell.outputArea && cell.outputArea.widgets[j];
      const shown = child && child.node.querySelector('.jp-OutputArea-output');
      if (o.data && o.data['application/vnd.jupyter.widget-view+json'] && shown &&
          shown.getAttribute('data-mime-type') === 'text/plain')
        add(i, 'widget shown as its text repr', shown.innerText);
      if (o.output_type === 'stream' && /IProgress not found/.test(o.text || ''))
        add(i, 'widgets unavailable in the kernel', o.text);
    });
  }
  node.querySelectorAll('mjx-merror, .MathJax_Error').forEach(e =>
    add(i, 'math error', (e.getAttribute('data-mjx-error') || e.getAttribute('title') || 'Math input error') +
        ' in: ' + e.textContent));
  if (text.includes('Math input error')) add(i, 'math error', lineWith(text, 'Math input error'));
  if (text.includes('Error displaying widget')) add(i, 'widget error', lineWith(text, 'Error displaying widget'));
  if (/Loading widget\.\.\./.test(text)) add(i, 'widget never rendered', 'still "Loading widget..."');
  node.querySelectorAll('.jp-OutputArea-output .progress-bar-danger, .jp-OutputArea-output [class*="mod-danger"]')
    .forEach(e => add(i, 'red (danger) progress bar',
                      (e.closest('.widget-hbox') || e.closest('.jp-OutputArea-output')).innerText.replace(/\s+/g, ' ')));
  node.querySelectorAll('.jp-OutputArea-output').forEach(e => {
    const mime = e.getAttribute('data-mime-type') || '';
    const t = e.innerText || '';
    if ((mime === 'text/plain' || mime === 'application/vnd.jupyter.stdout') && REPR.test(t))
      add(i, 'widget shown as its text repr', t.split('\n').find(l => REPR.test(l)) || t);
    if (e.closest('.jupyter-widgets') && mime === 'application/vnd.jupyter.stderr' && t.includes('Traceback'))
      add(i, 'error output in a widget', t.trim().split('\n').slice(-1)[0]);
  });
});
const errors = out.some(d => d[1] === 'error output');
panel.content.widgets.forEach((cell, i) => {  // a kernel that died and restarted leaves cells unrun
  if (!errors && cell.model.type === 'code' && cell.model.sharedModel.getSource().trim() &&
      cell.model.executionCount === null) add(i, 'cell did not run', 'no execution count after Run All');
});
return out;
"""


@dataclass(frozen=True)
class Defect:
    """One thing a learner would see broken: the cell (0-based, as in the .ipynb), what, and the text."""

    cell: int
    kind: str
    detail: str
    source: str = ""

    def __str__(self) -> str:
        where = f"cell {self.cell}" + (f" ({self.source})" if self.source else "") if self.cell >= 0 else "page"
        return f"{where}: {self.kind}: {self.detail}"


def _wait(what: str, probe: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """Poll ``probe`` until it returns something truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} (waited {timeout:.0f} s)")
        time.sleep(every)


def open_notebook(driver: Any, url: str, token: str, name: str, kernel: str, timeout: float) -> None:
    """Open ``name`` in JupyterLab and wait until its kernel ``kernel`` is idle."""
    driver.get(f"{url}/lab/tree/{name}?reset&token={token}")  # reset: no tab of an earlier notebook
    probe = PANEL + """
      const s = panel && panel.context && panel.context.path === arguments[0] && panel.sessionContext;
      if (!s || !s.session || !s.session.kernel) return null;
      return [s.session.kernel.name, s.kernelDisplayStatus];"""
    name_status = _wait(f"{name}: the kernel did not start",
                        lambda: (lambda r: r if r and r[1] in ("idle", "dead") else None)(
                            driver.execute_script(probe, name)), timeout)
    if name_status[0] != kernel or name_status[1] != "idle":
        raise RuntimeError(f"{name}: kernel {name_status[0]!r} is {name_status[1]}; expected {kernel!r} idle "
                           "(run `make install`, which installs the 'Python (pruning)' kernel)")
    driver.execute_script("window.jupyterapp.commands.execute('application:toggle-left-area');")


def opened_modified(driver: Any) -> list[Defect]:
    """A notebook that JupyterLab marks modified as soon as it is opened (before anything ran) is not
    committed in the form JupyterLab writes (nbformat minor version, cell ids, metadata)."""
    _settle(driver, timeout=20.0)
    dirty = driver.execute_script(PANEL + "return panel && panel.context && panel.context.model.dirty;")
    return [Defect(-1, "marked modified on opening", "JupyterLab changed the notebook before anything ran: commit it "
                   "in the form JupyterLab writes (nbformat.writes of the file)")] if dirty else []


def run_all(driver: Any, timeout: float) -> float:
    """Run all cells (Run > Run All Cells) and wait until they finished and the kernel is idle;
    the seconds it took."""
    t0 = time.monotonic()
    driver.execute_script(PANEL + """
      window.__runAll = {done: false};
      window.jupyterapp.commands.execute('notebook:run-all-cells').then(
        ok => { window.__runAll = {done: true, ok: ok}; },
        err => { window.__runAll = {done: true, ok: false, error: String(err)}; });""")
    probe = PANEL + """
      const r = window.__runAll, status = panel.sessionContext.kernelDisplayStatus;
      if (status === 'dead' || status === 'unknown') return 'kernel ' + status;
      const busy = panel.content.widgets.filter(c => c.model.type === 'code' && c.promptNode &&
                                                c.promptNode.textContent.includes('*')).length;
      return r && r.done && status === 'idle' && busy === 0 ? 'done' : null;"""
    state = _wait("running all cells did not finish", lambda: driver.execute_script(probe), timeout, every=1.0)
    if state != "done":
        raise RuntimeError(f"the {state} while running all cells")
    _settle(driver)
    return time.monotonic() - t0


def _settle(driver: Any, timeout: float = 60.0) -> None:
    """Wait until the page stops changing (widgets drawn, MathJax typeset)."""
    size = "return document.querySelector('.jp-Notebook').innerHTML.length;"
    last = [-1]

    def steady() -> bool:
        now = driver.execute_script(size)
        same, last[0] = now == last[0], now
        return same

    _wait("the page kept changing", steady, timeout, every=1.0)


def _first_lines(driver: Any) -> list[str]:
    return driver.execute_script(PANEL + """
      return panel.content.widgets.map(c => (c.model.sharedModel.getSource().split('\\n')
        .find(l => l.trim()) || '').trim().slice(0, 60));""")


def check_page(driver: Any) -> list[Defect]:
    """Every defect the notebook's page shows now (see :data:`FIND_DEFECTS`)."""
    lines = _first_lines(driver)
    found = driver.execute_script(FIND_DEFECTS, WIDGET_REPR)
    return list(dict.fromkeys(Defect(i, kind, detail, lines[i] if 0 <= i < len(lines) else "")
                              for i, kind, detail in found))


def sliders(driver: Any) -> list[Any]:
    """The slider handles of the notebook's widgets (noUiSlider handles, keyboard-focusable)."""
    return driver.execute_script(PANEL + """
      return Array.from(panel.content.node.querySelectorAll('.widget-slider .noUi-handle'));""")


SLIDER_STATE = r"""
const h = arguments[0], cell = h.closest('.jp-Cell');
const box = h.closest('.widget-slider');
const readout = box && box.querySelector('.widget-readout');
const imgs = Array.from(cell.querySelectorAll('.jp-OutputArea-output img')).map(i => i.src);
const panel = window.jupyterapp.shell.currentWidget;
return {cell: panel.content.widgets.findIndex(c => c.node === cell),
        now: h.getAttribute('aria-valuenow'), max: h.getAttribute('aria-valuemax'),
        readout: readout ? readout.innerText : '', label: box ? box.innerText.split('\n')[0] : '',
        figures: imgs, idle: panel.sessionContext.kernelDisplayStatus === 'idle'};
"""


def _figures(state: dict) -> str:
    return hashlib.sha1("\n".join(state["figures"]).encode()).hexdigest() if state["figures"] else ""


def move_slider(driver: Any, handle: Any, timeout: float) -> tuple[dict, list[Defect]]:
    """Move one slider a step with the keyboard (right, or left at its end) and wait for its figure
    to be redrawn; the slider's state afterwards and the defects seen (did not move, figure unchanged)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    before = driver.execute_script(SLIDER_STATE, handle)
    cell, label = before["cell"], before["label"] or "slider"
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus();", handle)
    key = Keys.ARROW_LEFT if before["now"] == before["max"] else Keys.ARROW_RIGHT
    ActionChains(driver).send_keys(key).perform()
    try:
        _wait("", lambda: driver.execute_script(SLIDER_STATE, handle)["readout"] != before["readout"], 10.0)
    except TimeoutError:
        return before, [Defect(cell, "slider did not move with the keyboard", f"{label} stayed at {before['readout']}")]
    old = _figures(before)

    def redrawn() -> dict | None:
        s = driver.execute_script(SLIDER_STATE, handle)
        return s if s["idle"] and _figures(s) and _figures(s) != old else None

    try:
        after = _wait("", redrawn, timeout, every=1.0)
        _settle(driver)
        after = driver.execute_script(SLIDER_STATE, handle)
    except TimeoutError:
        after = driver.execute_script(SLIDER_STATE, handle)
        what = "no figure" if not after["figures"] else "the same figure"
        return after, [Defect(cell, "figure did not change when the slider moved",
                              f"{label} {before['readout']} -> {after['readout']}: {what} after {timeout:.0f} s")]
    if not _figures(after):
        return after, [Defect(cell, "figure did not change when the slider moved", f"{label}: no figure drawn")]
    return after, []


def move_sliders(driver: Any, timeout: float) -> tuple[list[dict], list[Defect]]:
    """Move every slider of the page (see :func:`move_slider`); their states and the defects seen."""
    states, defects = [], []
    for handle in sliders(driver):
        state, found = move_slider(driver, handle, timeout)
        states.append({**state, "handle": handle})
        defects += found
    return states, defects


def screenshot(driver: Any, path: Path, cell: int | None) -> Path:
    """Save what the window shows, scrolled to ``cell`` (0-based; default: the first figure), as ``path``."""
    driver.execute_script(PANEL + """
      const cells = panel.content.widgets;
      let i = arguments[0];
      if (i === null) i = cells.findIndex(c => c.node.querySelector('.jp-OutputArea-output img'));
      if (i >= 0 && i < cells.length) cells[i].node.scrollIntoView({block: 'start'});""", cell)
    time.sleep(1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".part.png")
    if not driver.save_screenshot(str(tmp)):
        raise RuntimeError(f"the browser could not save a screenshot to {tmp}")
    tmp.replace(path)
    return path


def save_and_close(driver: Any, timeout: float = 60.0) -> None:
    """Save the notebook (the temporary copy), so its executed outputs can be kept next to the
    screenshot, and close it."""
    driver.execute_script("window.__saved = false; window.jupyterapp.commands.execute('docmanager:save')"
                          ".then(() => { window.__saved = true; });")
    _wait("saving the notebook did not finish", lambda: driver.execute_script(
        PANEL + "return window.__saved && !panel.context.model.dirty;"), timeout)
    driver.execute_script("return window.jupyterapp.commands.execute('application:close-all');")
