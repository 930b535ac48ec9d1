"""Notebook hygiene: what a learner would see broken in JupyterLab, caught before it ships.

Every notebook (lessons and solutions) must have:

- no control characters in any cell but newline and tab (a ``"\\alpha"`` written through a Python
  string becomes BEL + ``lpha``, which MathJax shows as "Math input error");
- Markdown formulas that parse: ``$`` and ``$$`` in pairs, no control character inside a
  formula, ``{`` and ``}`` balanced in each formula;
- outputs, execution counts and saved widget state stripped;
- exactly one cell tagged ``parameters``.

The checkers below return a list of problems (empty when clean), so the tests on small hand-made
cells show each one can fail.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)

#: Any C0 control character but tab (\x09) and newline (\x0a), and DEL.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
#: Control characters that come from a backslash escape in a Python string, and the TeX they ate.
ESCAPES = {"\x07": r"\a (\alpha, \approx)", "\x08": r"\b (\beta, \bar)", "\x0c": r"\f (\frac)",
           "\x0b": r"\v (\vec)", "\r": r"\r (\rho, \right)"}


def _src(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _describe(ch: str) -> str:
    hint = ESCAPES.get(ch)
    name = f"{ch!r} (U+{ord(ch):04X})"
    return f"{name}, written by the Python escape {hint}: use a raw string or double the backslash" if hint \
        else f"{name}: delete it"


def control_problems(text: str) -> list[str]:
    """Each control character in ``text`` (but newline and tab), with where it sits and how to fix it."""
    return [f"{_describe(m.group())} near {text[max(0, m.start() - 20):m.end() + 20]!r}"
            for m in CONTROL.finditer(text)]


def strip_code(markdown: str) -> str:
    """``markdown`` without fenced code blocks and inline code spans (a ``$`` there is not math)."""
    return CODE_SPAN.sub("", FENCE.sub("", markdown))


def formulas(markdown: str) -> tuple[list[str], list[str]]:
    """The formulas of a Markdown cell (between ``$$...$$`` or ``$...$``) and the delimiter problems
    found on the way (an unclosed ``$`` or ``$$``). ``\\$`` is a literal dollar; code is skipped."""
    text, found, problems, i = strip_code(markdown), [], [], 0
    while i < len(text):
        if text.startswith("\\", i):
            i += 2
            continue
        if text[i] != "$":
            i += 1
            continue
        delim = "$$" if text.startswith("$$", i) else "$"
        end = _closing(text, i + len(delim), delim)
        if end < 0:
            problems.append(f"unclosed {delim} near {text[i:i + 40]!r}: close the formula with {delim}")
            break
        found.append(text[i + len(delim):end])
        i = end + len(delim)
    return found, problems


def _closing(text: str, start: int, delim: str) -> int:
    """Index of the ``delim`` closing a formula opened before ``start``, or -1. An inline ``$`` formula
    ends at its paragraph (a blank line), as in Markdown."""
    j = start
    while j < len(text):
        if text.startswith("\\", j):
            j += 2
        elif text.startswith(delim, j) and (delim == "$$" or not text.startswith("$$", j)):
            return j
        elif delim == "$" and (text.startswith("$$", j) or text.startswith("\n\n", j)):
            return -1
        else:
            j += 1
    return -1


def brace_problems(formula: str) -> list[str]:
    """Unbalanced ``{``/``}`` in one formula (``\\{`` and ``\\}`` are literal braces)."""
    depth = 0
    for tok in re.findall(r"\\.|[{}]", formula, re.S):
        depth += {"{": 1, "}": -1}.get(tok, 0)
        if depth < 0:
            return [f"a '}}' closes nothing in ${formula}$: delete it or add the '{{' it closes"]
    return [f"{depth} '{{' left open in ${formula}$: add the closing '}}'"] if depth else []


def math_problems(markdown: str) -> list[str]:
    """Every reason MathJax would fail on the formulas of one Markdown cell."""
    found, problems = formulas(markdown)
    for f in found:
        problems += [f"inside {'$' + f + '$'!r}: {p}" for p in control_problems(f)]
        problems += brace_problems(f)
    return problems


def output_problems(nb: dict) -> list[str]:
    """Outputs, execution counts or widget state left in a notebook."""
    problems = [f"cell {i}: has outputs or an execution count; clear them (Edit > Clear Outputs of All Cells)"
                for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
                and (c.get("outputs") or c.get("execution_count") is not None)]
    if "widgets" in nb.get("metadata", {}):
        problems.append("notebook metadata holds saved widget state: delete metadata['widgets']")
    return problems


def parameters_problems(nb: dict) -> list[str]:
    """Anything but exactly one cell tagged ``parameters``."""
    tagged = [i for i, c in enumerate(nb["cells"]) if "parameters" in c.get("metadata", {}).get("tags", [])]
    return [] if len(tagged) == 1 else [f"cells {tagged} are tagged 'parameters': tag exactly one cell"]


def notebook_problems(nb: dict) -> list[str]:
    """All hygiene problems of one notebook, each naming its cell."""
    problems = []
    for i, c in enumerate(nb["cells"]):
        problems += [f"cell {i} ({c['cell_type']}): {p}" for p in control_problems(_src(c))]
        if c["cell_type"] == "markdown":
            problems += [f"cell {i} (markdown): {p}" for p in math_problems(_src(c))]
    return problems + output_problems(nb) + parameters_problems(nb)


# --- the notebooks ---------------------------------------------------------------------------------

def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 14, f"expected the 7 lessons and their solutions under notebooks/, found {NOTEBOOKS}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_hygiene(path):
    problems = notebook_problems(json.loads(path.read_text(encoding="utf-8")))
    assert not problems, f"{path.relative_to(ROOT)}:\n  " + "\n  ".join(problems)


# --- the checkers catch what they are for -----------------------------------------------------------

def _nb(*cells: dict) -> dict:
    return {"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _md(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def _code(text: str, tags: tuple[str, ...] = (), **extra) -> dict:
    return {"cell_type": "code", "metadata": {"tags": list(tags)}, "source": text,
            "outputs": [], "execution_count": None, **extra}


def _clean() -> dict:
    return _nb(_md("# 00 · Title\n\nA formula $\\sqrt{512/64} \\approx 2.8$ and $$\\frac{a}{b}$$."),
               _code('MODE = "quick"', tags=("parameters",)), _code("x = 1\n\tprint(x)"))


def test_a_clean_notebook_passes():
    assert notebook_problems(_clean()) == []


def test_a_bel_from_alpha_in_a_python_string_is_named_with_its_fix():
    nb = _clean()
    nb["cells"][0]["source"] = "scores about $\\sqrt{512/64}\x07pprox 2.8$ times smaller"
    problems = notebook_problems(nb)
    assert any("inside '$" in p and "U+0007" in p and "raw string" in p for p in problems), problems
    assert any(p.startswith("cell 0 (markdown)") for p in problems)


def test_a_control_character_in_a_code_cell_is_caught():
    nb = _clean()
    nb["cells"][2]["source"] = "label = 'a\x08b'"
    assert [p for p in notebook_problems(nb) if p.startswith("cell 2 (code)") and "U+0008" in p]


@pytest.mark.parametrize("text, fix", [
    ("costs $x + 1 and more", "close the formula with $"),
    ("display $$\\sum_i x_i$ here", "close the formula with $$"),
    ("one $a$ two $b\n\nnext paragraph$", "close the formula with $"),
    ("$\\frac{a}{b$", "add the closing '}'"),
    ("$a}b$", "delete it or add the '{'"),
])
def test_broken_formulas_are_named(text, fix):
    problems = math_problems(text)
    assert problems and any(fix in p for p in problems), problems


@pytest.mark.parametrize("text", [
    "a literal \\$5 and $x$", "code `$HOME` and $y$", "```bash\necho $PATH\n```\n$z$",
    "$\\{a\\}$ is a set", "$$\na\n\nb\n$$",
])
def test_what_is_not_math_or_is_balanced_passes(text):
    assert math_problems(text) == []


def test_outputs_counts_and_widget_state_are_caught():
    nb = _clean()
    nb["cells"][2]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "1\n"}]
    nb["cells"][1]["execution_count"] = 3
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    problems = output_problems(nb)
    assert len(problems) == 3 and "Clear Outputs" in problems[0] and "metadata['widgets']" in problems[2]


@pytest.mark.parametrize("tags", [(), ("parameters",)])
def test_not_exactly_one_parameters_cell_is_caught(tags):
    nb = _clean()
    nb["cells"][1]["metadata"]["tags"] = list(tags)
    if tags:
        nb["cells"][2]["metadata"]["tags"] = ["parameters"]
    assert any("tag exactly one cell" in p for p in parameters_problems(nb))
