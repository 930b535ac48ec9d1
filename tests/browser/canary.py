"""A notebook with one of each defect planted, checked before the lessons: when the browser check
stops seeing one of them (a JupyterLab or ipywidgets upgrade renamed what it looks for), the check
fails instead of passing every lesson unseen.

Part of the browser check (``make test-browser``, tests/browser/check_lessons.py).
"""
from __future__ import annotations

from pathlib import Path

import nbformat

__all__ = ["EXPECTED", "NAME", "missed", "write_canary"]

NAME = "canary.ipynb"

MARKDOWN = ("# Canary\n\nA brace left open: $\\frac{a}{b$.\n\n"
            "A BEL where `\\a` was eaten by a Python string: $\\sqrt{2}\x07pprox 1.41$.")
CELLS = [
    "import matplotlib.pyplot as plt\nfrom IPython.display import Javascript, display\n"
    "from tqdm.auto import tqdm\nfrom pruninglib.widgets import slider_explorer",
    "def moves(value):\n    plt.figure(figsize=(2, 2)); plt.plot([0, value]); plt.title(str(value)); plt.show()\n"
    "slider_explorer(moves, [1, 2, 3], description='moves')",
    "def stuck(value):\n    plt.figure(figsize=(2, 2)); plt.plot([0, 1]); plt.show()\n"
    "slider_explorer(stuck, [1, 2, 3], description='stuck')",
    "def fails(value):\n    if value > 1:\n        raise ValueError('planted slider error')\n"
    "    plt.figure(figsize=(2, 2)); plt.plot([0, value]); plt.show()\n"
    "slider_explorer(fails, [1, 2, 3], description='fails')",
    "bar = tqdm(total=10, desc='planted'); bar.update(3); bar.close()",
    "print('IntProgress(value=3, max=10)')",
    "display({'application/vnd.jupyter.widget-view+json': {'model_id': '0' * 32, 'version_major': 2,\n"
    "         'version_minor': 0}, 'text/plain': 'a widget'}, raw=True)",
    "display(Javascript(\"console.error('planted console error')\"))",
    "raise ValueError('planted error')",
]

#: (cell, kind) of each planted defect; cell -1 is the page (the console).
EXPECTED = {
    (0, "math error"),
    (3, "figure did not change when the slider moved"),
    (4, "error output in a widget"),
    (5, "red (danger) progress bar"),
    (6, "widget shown as its text repr"),
    (7, "widget error"),
    (-1, "browser console error"),
    (9, "error output"),
}
#: The slider whose figure does change: flagging it would be a false alarm.
HEALTHY = 2


def write_canary(folder: Path, kernel: str, display_name: str) -> Path:
    """Write the canary notebook into ``folder``; its path."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(MARKDOWN)] + [nbformat.v4.new_code_cell(c) for c in CELLS]
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": display_name, "language": "python"}
    path = folder / NAME
    nbformat.write(nb, path)
    return path


def missed(found: set[tuple[int, str]]) -> list[str]:
    """What the check failed to see in the canary, or saw where nothing is wrong (empty: all well)."""
    out = [f"cell {c}: {k} was planted but not seen" for c, k in sorted(EXPECTED - found)]
    out += [f"cell {c}: {k} reported on a healthy cell" for c, k in sorted(found) if c == HEALTHY]
    return out
