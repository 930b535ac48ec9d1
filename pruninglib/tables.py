"""Tables: one Markdown writer for the whole collection, and a display that renders it.

:func:`markdown_table` writes every table the collection shows: in the lessons (through
:func:`show_table`), in the batch runner's ``grid.md``, in lesson 05's Liu et al. layout and in
``bench/RESULTS.md``. :func:`show_table` displays a table rendered in JupyterLab (``text/markdown``)
with the same table as plain text for batch logs, and can :func:`~pruninglib.record` its values.
Used in every lesson.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

__all__ = ["format_cell", "markdown_table", "show_table"]

_ALIGN = {"l": "---", "r": "---:", "c": ":---:"}


def format_cell(value: Any, digits: int = 2) -> str:
    """One cell: floats to ``digits`` decimals, ``None`` and NaN as "–", anything else via ``str``.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any] | Sequence[Any]], columns: Sequence[str] | None = None,
                   headers: Sequence[str] | None = None, digits: int = 2,
                   align: Sequence[str] | None = None, fmt: Callable[[Any], str] | None = None) -> str:
    """A GitHub-flavoured Markdown table.

    Args:
        rows: mappings (``columns`` picks and orders their keys; default: the first row's keys;
            a missing key shows as "–") or sequences of cells (one per header).
        columns: keys to show, for mapping rows.
        headers: column titles (default: ``columns``); required for sequence rows.
        digits: decimals of floats (default formatting, :func:`format_cell`).
        align: ``"l"``, ``"r"`` or ``"c"`` per column (default: all left).
        fmt: formats one cell instead of :func:`format_cell`.

    Raises:
        ValueError: headers and columns of different lengths, a row with the wrong number of
            cells, or an unknown alignment.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """
    rows = list(rows)
    mapping_rows = bool(rows) and isinstance(rows[0], Mapping)
    if mapping_rows:
        columns = list(columns) if columns is not None else list(rows[0])
        headers = list(headers) if headers is not None else list(columns)
        if len(headers) != len(columns):
            raise ValueError(f"headers ({len(headers)}) and columns ({len(columns)}) differ in length")
        cells = [[r.get(c) for c in columns] for r in rows]  # type: ignore[union-attr]
    else:
        if headers is None:
            headers = list(columns) if columns is not None else []
        headers = list(headers)
        cells = [list(r) for r in rows]
        for i, r in enumerate(cells):
            if len(r) != len(headers):
                raise ValueError(f"row {i} has {len(r)} cells, the table has {len(headers)} columns")
    align = list(align) if align is not None else ["l"] * len(headers)
    if len(align) != len(headers) or any(a not in _ALIGN for a in align):
        raise ValueError(f"align needs one of {sorted(_ALIGN)} per column ({len(headers)}), got {align}")
    show = fmt or (lambda v: format_cell(v, digits))
    lines = ["| " + " | ".join(_escape(h) for h in headers) + " |", "|" + "|".join(_ALIGN[a] for a in align) + "|"]
    lines += ["| " + " | ".join(_escape(show(v)) for v in r) + " |" for r in cells]
    return "\n".join(lines)


def show_table(rows: Sequence[Mapping[str, Any] | Sequence[Any]], columns: Sequence[str] | None = None,
               headers: Sequence[str] | None = None, digits: int = 2, title: str | None = None,
               record_as: str | None = None, **kw: Any) -> None:
    """Display a table: rendered in JupyterLab, the same Markdown as plain text in batch logs.

    Args:
        rows, columns, headers, digits: as in :func:`markdown_table` (``**kw`` too).
        title: a bold line above the table.
        record_as: also :func:`~pruninglib.record` the rows under this name (mapping rows:
            ``{first column's value: {other column: value}}``; sequence rows: a list of lists).

    Returns:
        ``None``, so a cell that ends with it echoes nothing.

    Used in lessons 00, 01, 02, 03, 04, 05 and 06.
    """
    md = markdown_table(rows, columns, headers, digits, **kw)
    if title:
        md = f"**{title}**\n\n{md}"
    try:
        from IPython import get_ipython
        from IPython.display import display
        shell = get_ipython()
    except ImportError:  # pragma: no cover
        shell = None
    if shell is not None:
        display({"text/markdown": md, "text/plain": md}, raw=True)
    else:
        print(md)
    if record_as is not None:
        from pruninglib.run.record import record

        rows = list(rows)
        if rows and isinstance(rows[0], Mapping):
            cols = list(columns) if columns is not None else list(rows[0])
            value: Any = {str(r.get(cols[0])): {c: r.get(c) for c in cols[1:]} for r in rows}  # type: ignore[union-attr]
        else:
            value = [list(r) for r in rows]
        record(record_as, value, display_value=False)
