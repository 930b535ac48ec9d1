"""``python -m pruninglib.run``: see :mod:`pruninglib.run.runner`."""
import sys

from pruninglib.run.runner import main

sys.exit(main())
