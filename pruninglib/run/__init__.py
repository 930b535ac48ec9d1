"""The batch runner: ``python -m pruninglib.run`` executes lessons with papermill.

- :mod:`~pruninglib.run.runner`: the runner's public names (its modules: results, notebooks, tasks,
  stopping, kernels, execute, outdir, reports, resume, cluster, worker, api, cli);
- :mod:`~pruninglib.run.record`: ``record(name, value)``, how a notebook hands numbers to the runner;
- :mod:`~pruninglib.run.lesson_times`: the measured wall time of each lesson, for its header line.
"""
from pruninglib.run.runner import *  # noqa: F401,F403  (the runner's API: run_notebooks, main, ...)
from pruninglib.run.runner import __all__  # noqa: F401
