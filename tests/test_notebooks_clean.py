"""House rules for the notebooks: no outputs committed, one parameters cell with MODE, no sys.path."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").rglob("*.ipynb"))
NOTEBOOKS = [p for p in NOTEBOOKS if ".ipynb_checkpoints" not in p.parts]


def test_there_are_lessons():
    assert any(re.match(r"\d\d_", p.name) for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_house_rules(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for c in code:
        assert c.get("outputs", []) == [], f"{path.name}: commit notebooks without outputs"
        assert c.get("execution_count") is None, f"{path.name}: clear execution counts"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
    src = "".join(tagged[0]["source"])
    assert re.search(r'^MODE\s*=\s*"quick"', src, re.M), f"{path.name}: parameters cell must set MODE = \"quick\""
    allsrc = "\n".join("".join(c["source"]) for c in code)
    assert "sys.path" not in allsrc, f"{path.name}: import pruninglib as a package, do not edit sys.path"
    assert "import pruninglib" in allsrc or "from pruninglib" in allsrc
    md = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    if "solutions" not in path.parts:
        assert "Exercises" in md and "What we saw" in md, f"{path.name}: needs 'What we saw' and 'Exercises'"
