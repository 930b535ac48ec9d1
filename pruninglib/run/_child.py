"""``python -m pruninglib.run._child TASK.json RESULT.json``: one notebook execution for a Dask worker.

Part of the batch runner; started by :func:`pruninglib.run.worker.run_task`, never by hand. A
SIGINT/SIGTERM stops the notebook (and kills its kernel), marks it where it stopped and still
writes the result.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict

from pruninglib.atomic import atomic_write
from pruninglib.run.execute import _execute
from pruninglib.run.stopping import _stop_only_notebooks
from pruninglib.run.tasks import _Task

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Execute the task of ``argv[0]`` and write its :class:`~pruninglib.run.results.RunResult` to ``argv[1]``."""
    _stop_only_notebooks()
    task_file, result_file = argv
    with open(task_file, encoding="utf-8") as fh:
        task = _Task(**json.load(fh))
    result = _execute(task)
    atomic_write(result_file, [json.dumps(asdict(result), default=str).encode("utf-8")])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
