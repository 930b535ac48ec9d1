"""Every published number the collection quotes has a source a reader can open beside it (issue 15, item 4).

"Beside" means in the same block: the same paragraph or table of a Markdown cell, README.md or COURSE.md
(blocks are separated by blank lines), or the same code cell. A source is a paper with its table, section,
figure or abstract, a blog post, a file of the authors' code or documentation, an issue thread, or the
explicit mark "source not checked" where no source could be found. :data:`QUOTED` lists the numbers (as
each file writes them); every occurrence of each must have one. :data:`UNCHECKED` lists those for which the
project's sources hold no copy to check against: every occurrence must say so. The paper rows of lesson 05
(``rethinking.PAPER_RESULTS``) carry their source in a ``source`` field, and ``l1_filters``' PAPER_*
constants in the comment above them.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: What a source beside a number looks like.
SOURCE = re.compile(r"\b(?:Table|Sec\.|Fig\.)\s?\d|\babstract\b|Gildenblat 2017|\.py\b|\.json\b|\.md\b"
                    r"|documentation|issue #\d+|source not checked", re.I)
NOT_CHECKED = "source not checked"

#: (file, a published number as that file writes it). Every occurrence needs a source in its block.
QUOTED: list[tuple[str, str]] = [
    ("notebooks/00_tour.ipynb", "138,357,544"),
    ("notebooks/00_tour.ipynb", "512→120→84→10"),
    ("notebooks/01_obd_obs_hessian.ipynb", "in every case"),
    ("notebooks/02_taylor_criteria.ipynb", "30 minibatches"),
    ("notebooks/02_taylor_criteria.ipynb", "momentum 0.9"),
    ("notebooks/02_taylor_criteria.ipynb", "> 0.93"),
    ("notebooks/04_cats_vs_dogs_vgg16.ipynb", "98.7%"),
    ("notebooks/04_cats_vs_dogs_vgg16.ipynb", "538"),
    ("notebooks/04_cats_vs_dogs_vgg16.ipynb", "0.277 s"),
    ("notebooks/04_cats_vs_dogs_vgg16.ipynb", "400 + 400"),
    ("notebooks/04_cats_vs_dogs_vgg16.ipynb", "20 epochs"),
    ("notebooks/04_cats_vs_dogs_vgg16.ipynb", "15 more epochs"),
    ("notebooks/05_rethinking.ipynb", "34.2 %"),
    ("notebooks/05_rethinking.ipynb", "27.6 %"),
    ("notebooks/05_rethinking.ipynb", "64 %"),
    ("notebooks/05_rethinking.ipynb", "5 runs"),
    ("notebooks/05_rethinking.ipynb", "40 epochs"),
    ("notebooks/05_rethinking.ipynb", "10^{-5}"),
    ("notebooks/05_rethinking.ipynb", "70 % quantile"),
    ("notebooks/06_channel_selection.ipynb", "3.31x"),
    ("notebooks/06_channel_selection.ipynb", "+0.3% error"),
    ("notebooks/06_channel_selection.ipynb", "6.75"),
    ("notebooks/06_channel_selection.ipynb", "1.7x"),
    ("notebooks/solutions/04_cats_vs_dogs_vgg16_solutions.ipynb", "3.6×"),
    ("notebooks/solutions/05_rethinking_solutions.ipynb", "64 %"),
    ("notebooks/07_kfac_structured_eigendamage.ipynb", "73.34"),
    ("notebooks/07_kfac_structured_eigendamage.ipynb", "60.70"),
    ("notebooks/07_kfac_structured_eigendamage.ipynb", "60.66"),
    ("notebooks/07_kfac_structured_eigendamage.ipynb", "65.18"),
    ("notebooks/07_kfac_structured_eigendamage.ipynb", "8.80x"),
    ("README.md", "65.18"),
    ("notebooks/08_any_architecture.ipynb", "92.93"),
    ("notebooks/08_any_architecture.ipynb", "93.29"),
    ("notebooks/08_any_architecture.ipynb", "93.77"),
    ("notebooks/09_transformers_sparsegpt.ipynb", "27.66"),
    ("notebooks/09_transformers_sparsegpt.ipynb", "36.85"),
    ("notebooks/09_transformers_sparsegpt.ipynb", "magnitude 193"),
    ("notebooks/09_transformers_sparsegpt.ipynb", "1.88"),
    ("README.md", "> 0.93"),
    ("README.md", "92.93"),
    ("README.md", "27.66"),
    ("README.md", "36.85"),
    ("README.md", "2.8x"),
    ("README.md", "98.7%"),
    ("README.md", "538 MB"),
    ("README.md", "34.2%"),
    ("README.md", "1.7x"),
    ("README.md", "3.31x"),
]

#: (file, a published number) that no stored source could confirm: every occurrence says "source not checked".
UNCHECKED: list[tuple[str, str]] = [
    ("notebooks/01_obd_obs_hessian.ipynb", "2-2-1"),
    ("notebooks/02_taylor_criteria.ipynb", "10^{-3}"),
    ("notebooks/03_oracle_correlation.ipynb", "145"),
    ("notebooks/03_oracle_correlation.ipynb", "0.73"),
    ("notebooks/03_oracle_correlation.ipynb", "Birds-200"),
    ("notebooks/05_rethinking.ipynb", "9.09e7"),
    ("notebooks/05_rethinking.ipynb", "13.7 %"),
    ("notebooks/05_rethinking.ipynb", "38.6 %"),
    ("notebooks/05_rethinking.ipynb", "Table 4"),
    ("notebooks/solutions/04_cats_vs_dogs_vgg16_solutions.ipynb", "Table 2"),
    ("notebooks/solutions/05_rethinking_solutions.ipynb", "15.9 %"),
    ("notebooks/solutions/05_rethinking_solutions.ipynb", "0.159"),
    ("README.md", "| 0.73 |"),
    ("README.md", "| 145 |"),
    ("README.md", "93.63"),
    ("README.md", "93.53"),
]


def _markdown_blocks(text: str) -> list[str]:
    """Paragraphs, list items and whole tables of Markdown text."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        out += [b for b in re.split(r"\n(?=\s*(?:\d+\.|[-*])\s)", para) if b.strip()]
    return out


def _blocks(path: Path) -> list[str]:
    """The blocks a source must share with its number: paragraphs, list items and tables of Markdown
    (README, Markdown cells), whole code cells."""
    if path.suffix != ".ipynb":
        return _markdown_blocks(path.read_text(encoding="utf-8"))
    out = []
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        src = "".join(cell["source"])
        out += [src] if cell["cell_type"] == "code" else _markdown_blocks(src)
    return out


def _quoting(rel: str, number: str) -> list[str]:
    blocks = [b for b in _blocks(ROOT / rel) if number in b]
    assert blocks, f"{rel}: {number!r} is not quoted any more; update QUOTED/UNCHECKED in {Path(__file__).name}"
    return blocks


@pytest.mark.parametrize("rel, number", QUOTED, ids=[f"{r}:{n}" for r, n in QUOTED])
def test_every_quoted_number_has_its_source_beside_it(rel, number):
    bare = [b for b in _quoting(rel, number) if not SOURCE.search(b)]
    assert not bare, (f"{rel}: {number!r} is quoted without a source beside it; write the paper and table or "
                      f"section (or the file of the authors' code), or mark it '({NOT_CHECKED}: ...)', in: "
                      + " | ".join(b[:160] for b in bare))


@pytest.mark.parametrize("rel, number", UNCHECKED, ids=[f"{r}:{n}" for r, n in UNCHECKED])
def test_every_unconfirmed_number_says_so(rel, number):
    bare = [b for b in _quoting(rel, number) if NOT_CHECKED not in b]
    assert not bare, (f"{rel}: {number!r} has no source the project could check; mark it "
                      f"'({NOT_CHECKED}: why)' beside the number, in: " + " | ".join(b[:160] for b in bare))


def _assigned_literal(path: Path, name: str):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == name:
            return ast.literal_eval(node.value), node.lineno
    raise AssertionError(f"{path.name}: no {name} = ... at module level")


def test_every_paper_row_of_lesson_05_names_its_source():
    from pruninglib.lessons.rethinking import PAPER_RESULTS

    for key, row in PAPER_RESULTS.items():
        src = row.get("source", "")
        assert SOURCE.search(src) and "Liu et al. 2019" in src, \
            f"PAPER_RESULTS[{key!r}]: give a 'source' naming Liu et al. 2019 and its table (or 'source not checked')"


@pytest.mark.parametrize("name", ["PAPER_FLOPS_PRUNED", "PAPER_PARAMS_PRUNED"])
def test_l1_filters_paper_constants_name_their_source(name):
    path = ROOT / "pruninglib/methods/l1_filters.py"
    _, line = _assigned_literal(path, name)
    lines = path.read_text(encoding="utf-8").splitlines()
    comment = []
    for text in reversed(lines[:line - 1]):
        if not text.startswith("#:"):
            break
        comment.insert(0, text)
    assert comment and SOURCE.search(" ".join(comment)) and "Li et al. 2017" in " ".join(comment), \
        f"l1_filters.{name}: the '#:' comment above it must name Li et al. 2017 and the table (or 'source not checked')"
