"""Explorers: an ipywidgets slider when a live kernel with widgets is there, a static figure
otherwise (papermill, nbval, a rendered HTML page).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

__all__ = ["is_interactive", "slider_explorer"]


def is_interactive() -> bool:
    """True in a live Jupyter front end; False under papermill/nbval/CI or a plain script. Used in lessons 01 and 04."""
    if os.environ.get("PRUNINGLIB_STATIC") or os.environ.get("CI"):
        return False
    try:
        from IPython import get_ipython

        ip = get_ipython()
    except ImportError:  # pragma: no cover
        return False
    if ip is None or type(ip).__name__ != "ZMQInteractiveShell":
        return False
    # papermill and nbval drive a ZMQ kernel without a front end, which the kernel cannot tell
    # from JupyterLab: batch runs set PRUNINGLIB_STATIC=1 (the Makefile, .ci/run and
    # pruninglib.run do).
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def slider_explorer(draw: Callable[[Any], None], values: Sequence[Any], description: str = "value",
                    static_values: Sequence[Any] | None = None, interactive: bool | None = None) -> None:
    """Show ``draw(value)`` under a slider over ``values``.

    Args:
        draw: draws one figure for a value (call ``plt.show()`` inside); its parameter must be
            named ``value`` (the slider is passed as ``value=``).
        values: the slider's positions.
        description: the slider's label.
        static_values: what to draw when not interactive (default: first, middle and last).
        interactive: force the mode (default: :func:`is_interactive`).

    Used in lessons 01 and 04.
    """
    interactive = is_interactive() if interactive is None else interactive
    if interactive:
        import ipywidgets as W

        W.interact(draw, value=W.SelectionSlider(options=list(values), description=description,
                                                 continuous_update=False))
        return
    vals = list(static_values) if static_values is not None else sorted(
        {values[0], values[len(values) // 2], values[-1]}, key=list(values).index)
    print(f"(static view: {description} = {vals}; run the notebook in Jupyter for the slider)")
    for v in vals:
        draw(v)
