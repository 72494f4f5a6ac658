"""``python -m norga.report``: see :mod:`norga.report`."""

import sys

from norga.report.cli import main

sys.exit(main())
