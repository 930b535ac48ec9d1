"""House rules for the notebooks: no outputs committed, one parameters cell, lessons that look alike.

Every lesson opens the same way (title ``# NN · Title``; learning objectives, prerequisites, time and
why this lesson; a ``## Parameters`` heading above the cell tagged ``parameters`` with MODE, SEED and
THREADS; :func:`pruninglib.setup` in the first code cell after it), numbers its sections ``## N · ...``,
ends with What we saw, Summary and Exercises, and shows code in cells of at most 30 lines.
"""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").rglob("*.ipynb"))
NOTEBOOKS = [p for p in NOTEBOOKS if ".ipynb_checkpoints" not in p.parts]
LESSONS = [p for p in NOTEBOOKS if "solutions" not in p.parts]
SOLUTIONS = [p for p in NOTEBOOKS if "solutions" in p.parts]

#: The collection's lessons, in order; each has a solutions notebook.
EXPECTED_LESSONS = ["00_tour", "01_obd_obs_hessian", "02_taylor_criteria", "03_oracle_correlation",
                    "04_cats_vs_dogs_vgg16", "05_rethinking", "06_channel_selection",
                    "07_kfac_structured_eigendamage", "08_any_architecture", "09_transformers_sparsegpt"]
HEADER_ITEMS = ("**Learning objectives.**", "**Prerequisites.**", "**Time on a 2-core CPU.**", "**Why this lesson.**")
UNNUMBERED = {"Parameters", "What we saw", "Summary", "Exercises"}
MAX_CELL_LINES = 30


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _src(cell: dict) -> str:
    return "".join(cell["source"])


def test_the_lessons_are_exactly_these():
    assert [p.stem for p in LESSONS] == EXPECTED_LESSONS
    assert [p.stem for p in SOLUTIONS] == [f"{n}_solutions" for n in EXPECTED_LESSONS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_house_rules(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for c in code:
        assert c.get("outputs", []) == [], f"{path.name}: commit notebooks without outputs"
        assert c.get("execution_count") is None, f"{path.name}: clear execution counts"
    tagged = [i for i, c in enumerate(nb["cells"]) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
    src = _src(nb["cells"][tagged[0]])
    for name, pattern in (("MODE", r'^MODE\s*=\s*"quick"'), ("SEED", r"^SEED\s*="), ("THREADS", r"^THREADS\s*=")):
        assert re.search(pattern, src, re.M), f"{path.name}: the parameters cell must set {name}"
    allsrc = "\n".join(_src(c) for c in code)
    assert "sys.path" not in allsrc, f"{path.name}: import pruninglib as a package, do not edit sys.path"
    assert "import pruninglib" in allsrc or "from pruninglib" in allsrc
    later = [c for c in nb["cells"][tagged[0] + 1:] if c["cell_type"] == "code"]
    assert later and "setup(MODE, SEED, THREADS" in _src(later[0]), \
        f"{path.name}: the first code cell after the parameters calls pruninglib.setup(MODE, SEED, THREADS, ...)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_cells_show_one_idea(path):
    for i, c in enumerate(_cells(path)):
        if c["cell_type"] != "code":
            continue
        n = len(_src(c).splitlines())
        assert n <= MAX_CELL_LINES, f"{path.name} cell {i}: {n} lines; move the bookkeeping into pruninglib"
        for line in _src(c).splitlines():
            assert not re.match(r"\s*_\s*=\s*record\(", line), f"{path.name} cell {i}: record() returns None; drop '_ ='"
            assert not re.search(r"\brecord\(.*\);\s*$", line), f"{path.name} cell {i}: record() returns None; drop the ';'"
            assert "print(markdown_table(" not in line, f"{path.name} cell {i}: show tables with show_table()"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_title_form(path):
    first = _src(_cells(path)[0]).splitlines()[0]
    number = path.stem[:2]
    expected = rf"^# {number} · Solutions: \S" if "solutions" in path.parts else rf"^# {number} · \S"
    assert re.match(expected, first), f"{path.name}: title must read like {expected!r}, got {first!r}"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_header_and_sections(path):
    cells = _cells(path)
    head = _src(cells[0])
    for item in HEADER_ITEMS:
        assert item in head, f"{path.name}: the first cell needs {item}"
    tagged = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    above = cells[tagged - 1]
    assert above["cell_type"] == "markdown" and _src(above).startswith("## Parameters"), \
        f"{path.name}: a '## Parameters' heading goes right above the parameters cell"
    headings = [line[3:].strip() for c in cells if c["cell_type"] == "markdown"
                for line in _src(c).splitlines() if line.startswith("## ")]
    numbered = []
    for h in headings:
        if h in UNNUMBERED:
            continue
        m = re.match(r"^(\d+) · \S", h)
        assert m, f"{path.name}: section heading {h!r} must read '## N · Title' (or be one of {sorted(UNNUMBERED)})"
        numbered.append(int(m.group(1)))
    assert numbered == list(range(1, len(numbered) + 1)), f"{path.name}: sections numbered {numbered}, not 1, 2, 3, ..."
    for h in ("What we saw", "Summary", "Exercises"):
        assert h in headings, f"{path.name}: needs a '## {h}' section"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_sees_every_parameter(path):
    """papermill (and `python -m pruninglib.run -p NAME VALUE`) must find every name the parameters cell
    assigns: a comment with a second '=' on a line makes papermill skip that parameter."""
    import ast

    import papermill

    cell = next(c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", []))
    assigned = [t.id for n in ast.parse(_src(cell)).body if isinstance(n, ast.Assign) for t in n.targets]
    assert list(papermill.inspect_notebook(str(path))) == assigned, f"{path.name}: reword the comment (no '=' in it)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_in_the_form_jupyterlab_writes(path):
    """Opening a lesson in JupyterLab must not mark it modified: the file is what JupyterLab would save
    (nbformat.writes, the kernel's language_info; `python -m pruninglib.run.tidy` makes it so). The Python
    version inside language_info is the course machine's; another interpreter's differs there only."""
    from pruninglib.run.tidy import kernel_language_info, tidy_text

    text = path.read_text(encoding="utf-8")
    info = dict(kernel_language_info(), version=json.loads(text)["metadata"].get("language_info", {}).get("version"))
    assert tidy_text(text, info) == text, f"{path.name}: run `python -m pruninglib.run.tidy`"
