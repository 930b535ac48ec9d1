"""Keep the lessons in the exact form JupyterLab writes, so that opening one is not a change.

JupyterLab fills a notebook's ``metadata.language_info`` from the kernel as soon as the kernel
starts, and marks the notebook modified when that differs from the file. ``python -m
pruninglib.run.tidy`` writes every notebook as JupyterLab would save it (``nbformat.writes``, the
kernel's ``language_info``, outputs and execution counts cleared); ``--check`` only reports the
notebooks that differ (exit 1). ``tests/test_notebooks_clean.py`` keeps the committed notebooks so.
Part of the batch runner's tooling; no lesson calls it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["kernel_language_info", "tidy_text", "main"]

ROOT = Path(__file__).resolve().parents[2]


def kernel_language_info() -> dict:
    """The ``language_info`` ipykernel reports for this interpreter (what JupyterLab writes)."""
    from ipykernel.ipkernel import IPythonKernel

    return dict(IPythonKernel.language_info)


def tidy_text(text: str, language_info: dict | None = None) -> str:
    """``text`` (a notebook) as JupyterLab would save it, with outputs and execution counts cleared."""
    import nbformat

    nb = nbformat.reads(text, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata["language_info"] = language_info or kernel_language_info()
    nbformat.validate(nb)
    out = nbformat.writes(nb)
    return out if out.endswith("\n") else out + "\n"


def main(argv: list[str] | None = None) -> int:
    """Tidy (or with ``--check``, list) the notebooks under ``notebooks/``."""
    ap = argparse.ArgumentParser(prog="python -m pruninglib.run.tidy", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only list the notebooks that are not tidy (exit 1)")
    ap.add_argument("paths", nargs="*", type=Path, help="notebooks (default: every notebook under notebooks/)")
    args = ap.parse_args(argv)
    paths = args.paths or sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    from pruninglib.atomic import atomic_write

    untidy = []
    for p in paths:
        text = p.read_text(encoding="utf-8")
        tidy = tidy_text(text)
        if tidy != text:
            untidy.append(p)
            if not args.check:
                atomic_write(p, [tidy.encode("utf-8")])
    for p in untidy:
        print(("not tidy: " if args.check else "tidied: ") + str(p))
    return 1 if (args.check and untidy) else 0


if __name__ == "__main__":
    sys.exit(main())
